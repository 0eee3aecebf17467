"""The tester's asset upload: the streamed multipart body, the client call, the lines shown.
No display needed; a real socket for the client."""

import json
from datetime import datetime
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler

import pytest

from tester import format as fmt
from tester.client import Client, Result
from tester.upload import MultipartFile
from tests.test_tester_logic import Server, dead_port

ASSET = {"id": "9f86d081884c4d659a2feaa0c55ad015", "hash": "blake3:" + "ab" * 32,
         "name": "photo é.png", "size_bytes": 1234567, "content_type": "image/png",
         "created_at": "2025-01-02T03:04:05Z", "created_new": True}


class AssetHandler(BaseHTTPRequestHandler):
    """POST /assets as Cylindria answers it, recording the request."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append({"path": self.path, "headers": dict(self.headers),
                                     "body": body})
        data = json.dumps(ASSET).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def parts(content_type: str, body: bytes):
    """The parts of a multipart body, parsed by the standard library."""
    message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n"
                                       + body)
    return message.get_payload()


def test_the_body_is_one_multipart_part_of_the_whole_file(tmp_path):
    path = tmp_path / "photo é.png"
    content = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n"
    path.write_bytes(content)
    with MultipartFile(path) as body:
        data = body.read()
        assert len(body) == len(data) and body.read() == b""
    [part] = parts(body.content_type, data)
    assert part.get_param("name", header="Content-Disposition") == "file"
    assert part.get_content_type() == "image/png"
    assert part.get_payload(decode=True) == content
    assert body.file.closed


def test_the_body_reads_the_file_a_block_at_a_time(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * (5 * 1024 * 1024))
    with MultipartFile(path) as body:
        sizes = []
        while chunk := body.read(16384):
            sizes.append(len(chunk))
            assert body.file.tell() <= 16384 * len(sizes)  # never more of the file than sent
        assert sum(sizes) == len(body) and max(sizes) == 16384
    assert MultipartFile(path).content_type.startswith("multipart/form-data; boundary=")


def test_upload_posts_the_file_with_its_length_and_key(tmp_path):
    path = tmp_path / "photo.png"  # a non-ASCII name goes to the real server (test_tester_gui)
    content = b"\x89PNG\r\n\x1a\n" + b"\0" * 100_000
    path.write_bytes(content)
    with Server(AssetHandler) as server:
        result = Client(server.base_url, api_key="k").upload_asset(path)
        [sent] = server.received
    assert result.status == 201 and result.data == ASSET
    assert (result.method, result.url) == ("POST", server.base_url + "/assets")
    headers = sent["headers"]
    assert headers["X-API-Key"] == "k" and "Transfer-Encoding" not in headers
    assert int(headers["Content-Length"]) == len(sent["body"]) > len(content)
    [part] = parts(headers["Content-Type"], sent["body"])
    assert part.get_filename() == "photo.png" and part.get_payload(decode=True) == content


def test_upload_of_a_missing_file_sends_nothing(tmp_path):
    result = Client(f"http://127.0.0.1:{dead_port()}").upload_asset(tmp_path / "gone.png")
    assert result.status is None and result.error_text.startswith("cannot read ")
    assert "gone.png" in result.error_text


def test_upload_to_a_dead_port_is_a_connection_error(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello")
    result = Client(f"http://127.0.0.1:{dead_port()}").upload_asset(path)
    assert result.status is None and result.error_text.startswith("connection error:")


@pytest.mark.parametrize("created, words", [
    (True, "asset 9f86d081884c4d659a2feaa0c55ad015 · photo é.png · 1,234,567 bytes · new"),
    (False, "· already stored (created_new: false)"),
])
def test_an_uploaded_asset_gets_a_summary_line(created, words):
    result = Result("POST", "u", 201 if created else 200, 3.0, "OK", is_json=True,
                    data={**ASSET, "created_new": created})
    lines = fmt.format_lines("Upload asset", result, now=datetime(2025, 1, 2))
    assert words in lines[3][0] and lines[3][1] == fmt.INFO
    assert lines[4] == (fmt.pretty_json(result.data), fmt.BODY)


def test_an_upload_error_gets_the_error_line():
    result = Result("POST", "u", 413, 3.0, "REQUEST ENTITY TOO LARGE", is_json=True,
                    data={"error": "an asset may be at most 1 MiB", "code": "asset_too_large",
                          "details": {"limit_bytes": 1048576}})
    lines = fmt.format_lines("Upload asset", result)
    assert ("asset_too_large: an asset may be at most 1 MiB", fmt.ERROR) in lines


def test_the_asset_reference_is_a_workflow_input_value():
    reference = json.loads(fmt.asset_reference(ASSET))
    assert reference == {"__type": "core/ASSET", "info": {"id": ASSET["id"]}}
    assert fmt.is_asset(ASSET) and not fmt.is_asset({"job_id": "j", "status": "queued"})
