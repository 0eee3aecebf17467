"""README.md's marked commands run as written, in order, in a copy of the checkout against the
fake ComfyUI, and every output it shows is what they printed (tools/readme_samples.py); the
harness itself on a small sample (tests/readme_sample.md) and on blocks that fail."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tools import readme_sandbox, readme_samples
from tools.readme_compare import differences
from tools.readme_markdown import steps

SAMPLE = Path(__file__).with_name("readme_sample.md")


def test_readme_runs_as_written_and_shows_what_it_answers(soak):
    """With --soak the install commands install for real (network), else they find this
    environment's packages already there."""
    try:
        result = readme_samples.check(readme_samples.README, real_install=soak)
    except ValueError as exc:  # nothing marked: say so, never pass or skip quietly
        pytest.fail(str(exc))
    if result.problems:
        pytest.fail("\n\n".join(result.problems) + "\n\nIf the program is right, write the "
                    "real outputs in: python -m tools.readme_samples --write (a line `...` "
                    "stands for lines left out, such as pip's)", pytrace=False)


def test_the_sample_runs_and_shows_what_it_answers():
    result = readme_samples.check(SAMPLE)
    assert result.problems == []
    assert result.steps == 5 and len(result.outputs) == 4
    fake, cylindria = (result.printed[step.line] for step in steps(SAMPLE.read_text())[:2])
    assert "fake ComfyUI 0 listening on http://127.0.0.1:8188\n" in fake
    assert "Requirement already satisfied: aiohttp" in fake  # pip ran, and installed nothing
    assert "Requirement already satisfied: Flask" in cylindria
    assert "Collecting" not in fake + cylindria


def drifted(tmp_path: Path) -> Path:
    """The sample with two answers that drifted from the program's."""
    text = SAMPLE.read_text()
    text = text.replace('"status": "completed", "...": "..."', '"status": "failed", "...": "..."')
    text = text.replace("  Server: Cylindria\n", "  Server: waitress\n")
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def test_write_puts_the_real_outputs_in_and_keeps_the_elisions(tmp_path):
    readme = drifted(tmp_path)
    result = readme_samples.write(readme)
    assert len(result.problems) == 2
    assert "$.status: shown 'failed', real 'completed'" in result.problems[0]
    assert "-Server: waitress\n+Server: Cylindria" in result.problems[1]
    written = steps(readme.read_text())
    for step in written:
        if step.output is not None:
            assert differences(
                step.output.text, result.printed[step.line], step.background) == []
    job = written[3].output.text
    assert '"status": "completed", "...": "..."' in job and '"progress"' not in job
    assert written[1].output.text.startswith("...\nGenerated API key (shown once; stored in "
                                             "/home/me/.local/share/Cylindria/api_key):\n  ")


def markdown(tmp_path: Path, *blocks: str) -> Path:
    """A README of these blocks (each given with its marker and fences)."""
    path = tmp_path / "README.md"
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def run(script: str, marker: str = "<!-- run -->") -> str:
    return f"{marker}\n```bash\n{script}\n```"


def output(text: str) -> str:
    return f"<!-- output -->\n```\n{text}\n```"


def test_blocks_share_variables_and_the_folder(tmp_path):
    readme = markdown(tmp_path, run("X='two words'\ncd examples"),
                      run('echo "$X"; ls workflow_api.json; echo "$HOME" | grep -c /home$')
                      + "\n" + output("two words\nworkflow_api.json\n1"))
    assert readme_samples.check(readme).problems == []


def test_a_failing_block_stops_the_run_naming_its_line(tmp_path):
    readme = markdown(tmp_path, run("echo one"), run("echo two\necho three >&2\nfalse\necho never"))
    with pytest.raises(readme_sandbox.RunFailed,
                       match=r"^line 6: exited 1:\necho two\necho three >&2\nfalse\necho never\n"
                             r"---- its stdout ----\ntwo\n---- its stderr ----\nthree\n$"):
        readme_samples.check(readme)


def test_a_block_that_leaves_a_process_running_or_calls_another_host_is_refused(tmp_path):
    with pytest.raises(readme_sandbox.RunFailed, match="^line 1: left processes running"):
        readme_samples.check(markdown(tmp_path, run("sleep 60 &")))
    with pytest.raises(ValueError, match="^line 1: a runnable block may call 127.0.0.1 only, "
                                         "not backend.example.com"):
        readme_samples.check(markdown(tmp_path, run("curl http://backend.example.com/hook")))


def test_a_background_block_that_ends_or_never_answers_fails_clearly(tmp_path, monkeypatch):
    ready = "<!-- run: background ready=http://127.0.0.1:8000/ -->"
    with pytest.raises(readme_sandbox.RunFailed, match="exited 3 before http://127.0.0.1:"):
        readme_samples.check(markdown(tmp_path, run("echo starting; exit 3", ready)))
    monkeypatch.setattr(readme_sandbox, "READY_TIMEOUT", 0.5)
    with pytest.raises(readme_sandbox.RunFailed,
                       match=r"\(the README's http://127.0.0.1:8000/\) did not answer "
                             "within 0.5 s"):
        readme_samples.check(markdown(tmp_path, run("sleep 60", ready)))


def test_a_port_already_answering_fails_the_run_saying_so(tmp_path, monkeypatch):
    """Another program on a port a ready URL names would make the block look ready."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    monkeypatch.setattr(readme_sandbox.Ports, "for_steps",
                        classmethod(lambda cls, found: cls({8000: 9999, 8188: 9998, 8300: port})))
    readme = markdown(tmp_path, run("sleep 60", "<!-- run: background "
                                                "ready=http://127.0.0.1:8300/ -->"))
    with taken, pytest.raises(readme_sandbox.RunFailed,
                              match=rf"127.0.0.1:{port}/ \(the README's http://127.0.0.1:8300/\) "
                                    "takes connections before the block started"):
        readme_samples.check(readme)


def test_a_readme_with_nothing_marked_is_refused(tmp_path):
    with pytest.raises(ValueError, match="marks no block as runnable"):
        readme_samples.check(markdown(tmp_path, "```bash\necho hi\n```"))


def test_ports_are_free_ones_in_runs_and_outputs_name_the_readmes():
    ports = readme_sandbox.Ports({8000: 41000, 8188: 42000, 8189: 42001})
    assert ports.here("curl http://127.0.0.1:8000/x && fake --port 8188 && y localhost:8189") \
        == "curl http://127.0.0.1:41000/x && fake --port 42000 && y localhost:42001"
    assert ports.as_shown('{"comfy_url": "http://127.0.0.1:42001", "n": 42000}') \
        == '{"comfy_url": "http://127.0.0.1:8189", "n": 42000}'
    found = steps("<!-- run -->\n```bash\nfake --port 8188 --count 2; curl 127.0.0.1:9000\n```\n")
    mapping = readme_sandbox.Ports.for_steps(found).mapping
    assert {8000, 8188, 8195, 9000, 9007} <= set(mapping) and 8196 not in mapping
    assert mapping[8189] == mapping[8188] + 1 and len(set(mapping.values())) == len(mapping)
    receiver = steps("<!-- run: background ready=http://127.0.0.1:9000/ -->\n```bash\n"
                     "python receiver.py secret\n```\n")  # listens on its own default, 9000
    ports = readme_sandbox.Ports.for_steps(receiver)
    assert 9000 not in ports.mapping and ports.of(9000) == 9000 and ports.of(8000) != 8000
