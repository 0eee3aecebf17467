"""Checks of a fleet run (real node processes, each with its own fake ComfyUI, one PostgreSQL
database): which node's row holds each job, that every job reached one ComfyUI once (that of
the node its row names) and that no ComfyUI heard of another node's job, and that every node
answers the same for a job."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import psycopg
import requests

from tests.helpers import API_KEY, Api

# Job ids, prompt ids and output file names as they appear in a request to ComfyUI (a path,
# a query, a JSON body): the tests' ids are letters, digits and hyphens, and an output file is
# named <job id>_<counter>_.png, so each id is one token of these characters.
TOKEN = re.compile(r"[A-Za-z0-9-]+")


@dataclass(frozen=True)
class Row:
    """What the database says of a job: the node that holds it, its prompt, its output files."""

    node: str | None
    prompt_id: str | None
    filenames: tuple[str, ...]


def job_rows(database_url: str) -> dict[str, Row]:
    """Every job of the fleet's database, by id."""
    with psycopg.connect(database_url) as conn:
        found = conn.execute("SELECT job_id, node, prompt_id, outputs FROM jobs").fetchall()
    return {job_id: Row(node, prompt_id, tuple(o["filename"] for o in json.loads(outputs or "[]")))
            for job_id, node, prompt_id, outputs in found}


def prompts_not_once(fakes: dict, rows: dict[str, Row], job_ids) -> list[str]:
    """The jobs that did not reach exactly one ComfyUI once, with the row's prompt, on the
    node the row names (`fakes`: node name -> its fake ComfyUI)."""
    received = {name: fake.prompts_received() for name, fake in fakes.items()}
    wrong = []
    for job_id in job_ids:
        row = rows[job_id]
        where = {name: prompts.count(row.prompt_id) for name, prompts in received.items()
                 if row.prompt_id in prompts}
        if row.prompt_id is None or where != {row.node: 1}:
            wrong.append(f"{job_id}: row {row}, sent to {where}")
    every = [prompt for prompts in received.values() for prompt in prompts]
    ours = {rows[job_id].prompt_id for job_id in job_ids}
    wrong += [f"prompt {p} of no job of the run" for p in every if p not in ours]
    return wrong


def foreign_requests(fakes: dict, rows: dict[str, Row]) -> list[str]:
    """Requests a node's ComfyUI received that name a job another node's row holds (its id,
    its prompt, one of its output files): a node talks only to its own ComfyUI, about its own
    jobs. Empty when every ComfyUI heard only of its own node's jobs."""
    found = []
    for name, fake in fakes.items():
        theirs: dict[str, str] = {}
        for job_id, row in rows.items():
            if row.node != name:
                for token in (job_id, row.prompt_id, *row.filenames):
                    if token:
                        theirs.update({part: job_id for part in TOKEN.findall(token)
                                       if len(part) >= 8})
        for request in fake.requests():
            text = f"{request.path}?{request.query} {request.body.decode(errors='replace')}"
            named = {theirs[token] for token in TOKEN.findall(text) if token in theirs}
            if named:
                found.append(f"{name}'s ComfyUI: {request.method} {request.path} names "
                             f"{sorted(named)}")
    return found


def events_streamed(url: str, job_id: str) -> list[tuple[str, dict]]:
    """The (event, data) GET /jobevents/<id> sends, until its stream ends."""
    events, name = [], None
    with requests.get(f"{url}/jobevents/{job_id}", headers={"X-API-Key": API_KEY},
                      stream=True, timeout=60) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def answers_for(url: str, job_id: str) -> dict:
    """What a node answers for a completed job: its status, its events, its outputs (the list,
    the first file whole and a range of it) and its v2 view (the node's own address taken
    out of the links, which are absolute)."""
    api = Api(url)
    v2 = api.get(f"/api/v2/jobs/{job_id}")
    part = api.get(f"/jobresult/{job_id}/0", headers={"Range": "bytes=7-70"})
    return {"status": api.status(job_id), "events": events_streamed(url, job_id),
            "outputs": api.get(f"/jobresult/{job_id}").json(),
            "file": api.get(f"/jobresult/{job_id}/0").content,
            "range": (part.status_code, part.headers.get("Content-Range"), part.content),
            "v2": (v2.status_code, json.loads(v2.text.replace(url, "")))}


def same_answers(urls: list[str], job_id: str, timeout: float = 10.0) -> dict:
    """Every node's answers for a completed job, once they are the same (another node's row
    is read again within a second of its change); they are returned."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [answers_for(url, job_id) for url in urls]
        if all(answers == seen[0] for answers in seen):
            return seen[0]
        if time.monotonic() > deadline:
            differing = {key: [answers[key] for answers in seen] for key in seen[0]
                         if any(answers[key] != seen[0][key] for answers in seen)}
            raise AssertionError(f"{job_id}: the nodes answer differently: {differing}")
        time.sleep(0.2)
