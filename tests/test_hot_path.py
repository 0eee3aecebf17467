"""The hot read path's savings keep its answers: GET /jobstatus bodies encoded once per job
record (cylindria.web.views.EncodedViews), and requests counted in batches (cylindria.web.metrics)."""
import dataclasses
import json
import threading
import time

from bench.store import finished_job
from comfy.jobs.job import JobStatus
from tests.helpers import Api
from tests.test_metrics import scrape
from tests.test_named_keys import ALICE, BOB, named  # noqa: F401 - named is a fixture
from cylindria.web.metrics import COUNT_EVERY
from cylindria.web.views import EncodedViews, job_view


def test_an_unchanged_record_is_answered_with_the_bytes_encoded_the_first_time():
    views, job = EncodedViews(), finished_job(1, time.time())
    first = views.body(job, None, None)
    assert views.body(job, None, None) is first
    assert json.loads(first) == json.loads(json.dumps(job_view(job)))


def test_an_edited_copy_of_the_record_gets_its_own_body():
    views, job = EncodedViews(), finished_job(2, time.time())
    views.body(job, None, None)
    edited = dataclasses.replace(job, status=JobStatus.FAILED, error={"type": "E"})
    assert json.loads(views.body(edited, None, None))["status"] == "failed"
    equal = dataclasses.replace(edited)  # equal, but another record: never taken for it
    assert views.body(equal, None, None) is not views.body(edited, None, None)


def test_a_held_job_shows_its_place_in_the_queue_as_it_is_now():
    views = EncodedViews()
    job = dataclasses.replace(finished_job(3, time.time()), status=JobStatus.HELD, gpu_id=None)
    assert json.loads(views.body(job, 4, None))["queue_position"] == 4
    assert json.loads(views.body(job, 1, None))["queue_position"] == 1


def test_a_job_with_a_webhook_shows_its_deliveries_as_they_are_now():
    views = EncodedViews()
    job = dataclasses.replace(finished_job(4, time.time()), webhook="http://127.0.0.1:9/hook")
    first = {"url": "http://127.0.0.1:9/hook", "state": "pending"}
    then = {"url": "http://127.0.0.1:9/hook", "state": "delivered"}
    assert json.loads(views.body(job, None, first))["webhook"] == first
    assert json.loads(views.body(job, None, then))["webhook"] == then


def test_at_most_size_records_are_kept():
    views = EncodedViews(size=3)
    jobs = [finished_job(n, time.time()) for n in range(5)]
    for job in jobs:
        views.body(job, None, None)
    assert len(views._bodies) == 3
    assert [kept[0] for kept in views._bodies.values()] == jobs[2:]


def test_a_scrape_counts_every_request_answered_before_it(named):
    threads, each = 4, COUNT_EVERY // 2 + 3  # past the batch size twice, and not a multiple
    def poll():
        bob = Api(named.url, key=BOB)
        for _ in range(each):
            assert bob.get("/jobstatus/nope").status_code == 404
    workers = [threading.Thread(target=poll) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    samples = scrape(Api(named.url, key=ALICE))
    rule = ("endpoint", "/jobstatus/<anypath:job_id>")
    assert samples[("cylindria_http_requests_total", (rule, ("method", "GET"),
                                                      ("status", "404")))] == threads * each
    assert samples[("cylindria_http_request_duration_seconds_count", (rule,))] == threads * each
    assert samples[("cylindria_client_requests_total", (("client", "bob"),))] == threads * each
