"""How the README's shown outputs are read and compared (tools/readme_compare.py) and how its
runnable blocks are marked (tools/readme_markdown.py): no process started here."""
from __future__ import annotations

import json

import pytest

from tools.readme_compare import differences, mask, rewritten, wrap_json
from tools.readme_markdown import MarkupError, steps, with_outputs

JOB = {"job_id": "render-0001", "gpu_id": 1, "prompt_id": "6b1056cf-9028-4e7c-91e4-25a0d3565d91",
       "status": "completed", "progress": {"nodes_done": 3, "percent": 100.0},
       "submitted_at": "2026-12-01T06:53:27.092Z", "outputs": [{"node_id": "3"}, {"node_id": "4"}],
       "submitted_by": "key-67f51548"}


def real(value=JOB, **changes) -> str:
    """A compact answer, as curl prints Cylindria's (one line, a final newline)."""
    return json.dumps({**value, **changes}, separators=(",", ":")) + "\n"


def test_what_differs_from_run_to_run_is_masked():
    assert mask("2026-12-01T06:53:27.092Z 2026-12-07 12:56:04,623 "
                "6b1056cf-9028-4e7c-91e4-25a0d3565d91 whsec_hz6VYcK+Nazv2doq/CdGls1Iv7UhrBIepuE= "
                "key-67f51548 0.05s 9 ms") \
        == "<time> <time> <uuid> whsec_<secret> key-<hash> <duration> <duration>"
    assert mask("  x1mjDWWH4xMwQQF4-_fsdV14A885soBLYgyHs8qw-ek") == "  <key>"
    assert mask("Date: Mon, 07 Dec 2026 13:01:49 GMT\nContent-Length: 51\nRatelimit-Remaining: 7") \
        == "Date: <n>\nContent-Length: <n>\nRatelimit-Remaining: <n>"
    assert mask('cylindria_jobs_total{status="completed"} 3.0') \
        == 'cylindria_jobs_total{status="completed"} <n>'
    assert mask("/home/alice/.local/share/Cylindria") == "/home/<user>/.local/share/Cylindria"
    assert mask("render-0001 GPU 1 queue_position 0") == "render-0001 GPU 1 queue_position 0"


def test_a_wrapped_answer_is_the_same_value_as_a_compact_one():
    shown = wrap_json(dict(JOB, prompt_id="00000000-0000-4000-8000-000000000000"))
    assert "\n" in shown and differences(shown, real()) == []


def test_every_real_key_is_shown_in_its_order_unless_elided():
    missing = {k: v for k, v in JOB.items() if k != "submitted_by"}
    assert "$: the answer's key 'submitted_by' is not shown" in differences(
        json.dumps(missing), real())
    swapped = dict(gpu_id=1, job_id="render-0001", **{k: v for k, v in JOB.items()
                                                     if k not in ("job_id", "gpu_id")})
    assert differences(json.dumps(swapped), real())[0].startswith("$: keys shown in the order")
    elided = '{"job_id": "render-0001", "status": "completed", "...": "..."}'
    assert differences(elided, real()) == []
    assert differences(elided.replace("completed", "failed"), real())[0] \
        == "$.status: shown 'failed', real 'completed'"
    assert differences('{"job_id": "render-0001", "...": "...", "colour": "red"}', real())[0] \
        == "$: shown key 'colour' is not in the answer"


def test_values_compare_exactly_and_arrays_may_end_elided():
    assert differences(real(gpu_id=0), real()) != []
    assert differences(real(progress={"nodes_done": 3, "percent": 100}), real()) != []  # int
    first_only = real(outputs=[{"node_id": "3"}, "..."])
    assert differences(first_only, real()) == []
    assert differences(real(outputs=[{"node_id": "3"}]), real())[0] \
        == "$.outputs: 1 elements shown, 2 in the answer"


def test_text_lines_compare_in_order_and_dots_stand_for_lines_left_out():
    printed = "HTTP/1.1 204 NO CONTENT\r\nAllow: PUT, OPTIONS\r\nServer: Cylindria\r\n\r\n"
    assert differences("HTTP/1.1 204 NO CONTENT\nAllow: PUT, OPTIONS\nServer: Cylindria", printed) \
        == []
    assert "-Allow: OPTIONS, PUT" in differences("HTTP/1.1 204 NO CONTENT\nAllow: OPTIONS, PUT\n"
                                                 "Server: Cylindria", printed)
    assert differences("HTTP/1.1 204 NO CONTENT\n...", printed) == []
    assert differences("...\nServer: Cylindria", printed) == []
    assert differences("HTTP/1.1 204 NO CONTENT", printed) != []
    assert differences("HTTP/1.1 204 NO CONTENT", printed, prefix_only=True) == []


def test_an_event_streams_data_lines_are_json_after_their_prefix():
    printed = 'event: status\ndata: {"job_id":"j","status":"running","progress":{}}\n'
    assert differences('event: status\ndata: {"job_id": "j", "...": "..."}', printed) == []
    assert differences('event: status\ndata: {"job_id": "k", "...": "..."}', printed) != []


def test_rewritten_takes_the_real_values_and_keeps_the_elisions():
    shown = ('...\n{"job_id": "render-0001", "status": "failed", "...": "...",\n'
             ' "submitted_by": "key-00000000"}\ndone')
    printed = "Collecting x\nInstalled x\n" + real() + "done\n"
    assert rewritten(shown, printed) == ('...\n{"job_id": "render-0001", "status": "completed", '
                                         '"...": "...", "submitted_by": "key-67f51548"}\ndone')
    assert rewritten("only this\n", "only this\nand more\n", prefix_only=True) == "only this"
    unmatched = rewritten('{"job_id": "x", "...": "..."}', "a line\n" + real())
    assert unmatched == 'a line\n{"job_id": "render-0001", "...": "..."}'


def test_an_answer_shown_as_curl_prints_it_is_written_back_so():
    shown = real(status="queued").strip()
    assert rewritten(shown, real()) == real().strip()  # as printed, byte for byte
    elided = '{"job_id":"render-0001","status":"queued","...":"..."}'
    assert rewritten(elided, real()) == '{"job_id":"render-0001","status":"completed","...":"..."}'
    assert differences(elided, real())[-2:] == [
        '-{"job_id":"render-0001","status":"queued","...":"..."}',
        '+{"job_id":"render-0001","status":"completed","...":"..."}']


def test_long_answers_are_wrapped_inside_their_brackets():
    text = wrap_json({"a": {"b": list(range(40)), "c": "x" * 50}, "d": 1})
    assert text == ('{"a": {"b": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, '
                    '18, 19, 20, 21, 22, 23,\n             24, 25, 26, 27, 28, 29, 30, 31, 32, '
                    '33, 34, 35, 36, 37, 38, 39],\n       "c": "' + "x" * 50 + '"},\n "d": 1}')
    assert all(len(line) <= 100 for line in text.splitlines())
    assert json.loads(text) == {"a": {"b": list(range(40)), "c": "x" * 50}, "d": 1}


SAMPLE = """Intro.

<!-- run: background ready=http://127.0.0.1:8188/x -->
```bash
fake
```

What it prints, after prose:

<!-- output -->
```
old
```

- In a list:

  <!-- run -->
  ```bash
  curl a
  ```
  <!-- output -->
  ```json
  {"a": 1}
  ```

```markdown
<!-- run -->
```bash
shown as text, not marked
```
"""


def test_marked_blocks_are_found_in_order_with_their_outputs():
    found = steps(SAMPLE)
    assert [(s.line, s.block.text, s.background, s.ready) for s in found] == [
        (3, "fake", True, "http://127.0.0.1:8188/x"), (17, "curl a", False, None)]
    assert [s.output.text for s in found] == ["old", '{"a": 1}']
    rewritten_file = with_outputs(SAMPLE, {found[0].output.opening: "new\nlines",
                                           found[1].output.opening: '{"a": 2}'})
    assert rewritten_file == SAMPLE.replace("old", "new\nlines").replace('{"a": 1}', '{"a": 2}')


@pytest.mark.parametrize("text, message", [
    ("<!-- run -->\n\n```bash\nx\n```\n", "README.md:1: the marker is not immediately followed"),
    ("<!-- run -->\n```python\nx\n```\n", "README.md:1: a run marker needs a ```bash block"),
    ("<!-- run -->\n```bash\nx\n", "README.md:1: the fenced block is never closed"),
    ("<!-- run: background -->\n```bash\nx\n```\n", "README.md:1: a background block needs"),
    ("<!-- run: later -->\n```bash\nx\n```\n", "README.md:1: unknown run option 'later'"),
    ("text\n<!-- output -->\n```\nx\n```\n", "README.md:2: <!-- output --> does not follow a run"),
    ("<!-- run -->\n```bash\nx\n```\n```\ny\n```\n<!-- output -->\n```\nz\n```\n",
     "README.md:8: <!-- output --> does not follow a run block"),
])
def test_a_marker_that_marks_nothing_runnable_is_an_error(text, message):
    with pytest.raises(MarkupError, match="^" + message.replace("(", r"\(").replace("`", "`")):
        steps(text)
