"""``simsearch serve``'s HTTP API through the ASGI client: every endpoint answers what the command line's ``--json``
prints, every error is ``{"error", "remedy"}`` with its status, nothing outside a collection is ever read, and a
commit made while the app runs is answered by the next query. One test runs the real server process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import handmade_png, write_folder
from tests.helpers import error_lines, invoke


def upload(*paths: Path, field: str = "file") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


@pytest.fixture
def served(small_collection: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[TestClient, Path, Path]]:
    """An app over the small collection (and its model folder as model 'model'): (client, home, images)."""
    from simsearch.service import create_app

    home, folder = small_collection
    app = create_app(home, models=[tmp_path / "model"], device="cpu", use_gpu=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, home, folder


def test_health_collections_and_info_are_what_the_cli_prints(served: tuple[TestClient, Path, Path]) -> None:
    client, home, _ = served
    assert client.get("/health").json() == {"status": "ok", "version": "0.1.0", "collections": 1}
    assert client.get("/collections").json() == {"collections": ["demo"], "models": ["model"]}
    info = client.get("/collections/demo")
    assert info.status_code == 200
    assert info.json() == json.loads(invoke("info", "--name", "demo", "--home", home, "--json").stdout)


def test_query_answers_what_query_json_prints(served: tuple[TestClient, Path, Path]) -> None:
    client, home, folder = served
    files = [folder / "vbars" / "2.png", folder / "blob" / "0.png"]
    answer = client.post("/collections/demo/query", params={"k": 4}, files=upload(*files))
    assert answer.status_code == 200
    cli = json.loads(invoke("query", *files, "-k", 4, "-n", "demo", "--home", home, "--json", "--device", "cpu").stdout)
    for result in cli:
        result["query"] = Path(result["query"]).name  # the service names an upload by its file name
    assert answer.json() == cli
    assert [r["vote"] for r in answer.json()] == ["vbars", "blob"]
    first = answer.json()[0]["neighbours"][0]
    assert first["distance"] == 0.0 and first["path"] == "vbars/2.png"


def test_open_set_query_holds_the_nearest_to_the_threshold(served: tuple[TestClient, Path, Path]) -> None:
    client, _, folder = served
    image = folder / "hbars" / "1.png"
    near = client.post("/collections/demo/query?k=3&open_set=true&threshold=0.5", files=upload(image)).json()[0]
    assert near["unknown"] is False and near["threshold"] == 0.5 and near["vote"] == "hbars"
    # A distance no neighbour but the image itself is within: a fresh image is "unknown".
    noisy = folder.parent / "noisy.png"
    pixels = np.asarray(Image.open(image)).astype(np.int16) + np.random.default_rng(0).integers(-90, 90, (16, 16))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(noisy)
    far = client.post("/collections/demo/query?k=3&open_set=true&threshold=0.001", files=upload(noisy)).json()[0]
    assert far["unknown"] is True and far["vote"] is None and far["reason"].startswith("nearest ")


def test_verify_answers_what_verify_json_prints(served: tuple[TestClient, Path, Path], tmp_path: Path) -> None:
    client, _, folder = served
    a, b = folder / "hbars" / "0.png", folder / "hbars" / "3.png"
    by_model = client.post("/verify?model=model", files=upload(a, field="a") + upload(b, field="b"))
    assert by_model.status_code == 200
    cli = json.loads(invoke("verify", a, b, "-m", tmp_path / "model", "--json", "--device", "cpu").stdout)
    expected = {**cli, "a": "0.png", "b": "3.png", "source": "model model"}
    assert by_model.json() == expected
    by_name = client.post("/verify?name=demo", files=upload(a, field="a") + upload(b, field="b")).json()
    assert by_name == {**expected, "source": "collection demo"}  # the collection was indexed with that model
    other = client.post(
        "/verify?name=demo&threshold=0.0001", files=upload(a, field="a") + upload(folder / "vbars/1.png", field="b")
    ).json()
    assert other["match"] is False and other["threshold"] == 0.0001 and other["operating_point"] == "manual"


def test_embed_gives_the_encoders_embeddings(served: tuple[TestClient, Path, Path], tmp_path: Path) -> None:
    from simsearch.embedding import embed_files
    from simsearch.models.encoder import Encoder

    client, _, folder = served
    files = [folder / "blob" / "1.png", folder / "vbars" / "4.png"]
    answer = client.post("/collections/demo/embed", files=upload(*files)).json()
    encoder = Encoder.load(tmp_path / "model")
    expected = embed_files(encoder, files, convert=True).embeddings
    assert [e["name"] for e in answer["embeddings"]] == ["1.png", "4.png"]
    assert answer["dim"] == encoder.dim == expected.shape[1] and answer["metric"] == encoder.metric
    np.testing.assert_allclose(np.array([e["embedding"] for e in answer["embeddings"]]), expected, rtol=1e-6)


def test_images_are_served_by_id_and_as_thumbnails(served: tuple[TestClient, Path, Path]) -> None:
    client, _, folder = served
    neighbour = client.post("/collections/demo/query?k=1", files=upload(folder / "blob" / "2.png")).json()[0]
    image_id = neighbour["neighbours"][0]["id"]
    full = client.get(f"/collections/demo/images/{image_id}")
    assert full.status_code == 200 and full.content == (folder / "blob" / "2.png").read_bytes()
    assert full.headers["content-type"] == "image/png"
    thumb = client.get(f"/collections/demo/images/{image_id}", params={"thumb": 1})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert max(Image.open(__import__("io").BytesIO(thumb.content)).size) <= 160


def error_of(response: httpx.Response, status: int) -> str:
    """The error text of a JSON error answer, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "remedy"} and body["error"], body
    assert "Traceback" not in response.text
    return str(body["error"])


def test_each_bad_request_gets_its_status_and_one_line(served: tuple[TestClient, Path, Path]) -> None:
    client, _, folder = served
    image = upload(folder / "blob" / "0.png")
    pair = upload(folder / "blob/0.png", field="a") + upload(folder / "blob/1.png", field="b")
    assert "no collection named 'nope'" in error_of(client.get("/collections/nope"), 404)
    assert "no collection named 'nope'" in error_of(client.post("/collections/nope/query", files=image), 404)
    assert "no model named 'other'" in error_of(client.post("/verify?model=other", files=pair), 404)
    assert "no image 9999" in error_of(client.get("/collections/demo/images/9999"), 404)
    assert "no such endpoint" in error_of(client.get("/nothing/here"), 404)
    assert "not an image" in error_of(
        client.post("/collections/demo/query", files=[("file", ("notes.txt", b"hello", "text/plain"))]), 415
    )
    assert "k:" in error_of(client.post("/collections/demo/query?k=0", files=image), 422)
    assert "threshold" in error_of(client.post("/collections/demo/query?open_set=1&threshold=abc", files=image), 422)
    assert "no 'file' field" in error_of(client.post("/collections/demo/query"), 422)
    assert "image_id" in error_of(client.get("/collections/demo/images/first"), 422)
    both = client.post("/verify?name=demo&model=model", files=pair)
    assert "not both" in error_of(both, 422)
    assert "Maximum number of files is 64" in error_of(client.post("/collections/demo/query", files=image * 65), 400)
    assert client.get("/health").status_code == 200  # and it keeps serving


def test_huge_bodies_and_decompression_bombs_are_refused(small_collection: tuple[Path, Path]) -> None:
    from simsearch.service import create_app

    home, folder = small_collection
    client = TestClient(create_app(home, device="cpu", use_gpu=False, max_upload_bytes=50_000))
    big = [("file", ("big.png", b"\x89PNG" + os.urandom(80_000), "image/png"))]
    assert "over the 50,000-byte limit" in error_of(client.post("/collections/demo/query", files=big), 413)
    chunks = (b"--x\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n", *[b"\0" * 10_000] * 8)
    chunked = client.post(  # no Content-Length: counted as it arrives
        "/collections/demo/query", content=iter(chunks), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert "transfer-encoding" not in chunked.request.headers or "content-length" not in chunked.request.headers
    assert "over the 50,000-byte limit" in error_of(chunked, 413)
    bomb = [("file", ("bomb.png", handmade_png(30_000, 30_000), "image/png"))]
    assert "decompression bomb" in error_of(client.post("/collections/demo/query", files=bomb), 413)
    assert client.post("/collections/demo/query", files=upload(folder / "blob/0.png")).status_code == 200


def test_a_token_guards_everything_but_health_and_the_page(small_collection: tuple[Path, Path]) -> None:
    from simsearch.service import create_app

    home, folder = small_collection
    client = TestClient(create_app(home, token="s3cret", device="cpu", use_gpu=False))
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        answer = client.get("/collections", headers=headers)
        assert "access token" in error_of(answer, 401) and answer.headers["www-authenticate"] == "Bearer"
    assert "access token" in error_of(client.post("/collections/demo/query", files=upload(folder / "blob/0.png")), 401)
    assert client.get("/collections", headers={"Authorization": "Bearer s3cret"}).json()["collections"] == ["demo"]
    assert client.get("/collections/demo/images/0?thumb=1&token=s3cret").status_code == 200
    # The access log never shows it (the page puts it on image URLs).
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s"', ("127.0.0.1", "GET", ""), None
    )
    record.args = ("127.0.0.1", "GET", "/collections/demo/images/0?thumb=1&token=s3cret")
    assert all(f.filter(record) for f in logging.getLogger("uvicorn.access").filters)
    assert record.getMessage() == '127.0.0.1 - "GET /collections/demo/images/0?thumb=1&token=…"'


def test_nothing_outside_the_collection_is_read(served: tuple[TestClient, Path, Path], tmp_path: Path) -> None:
    client, _, folder = served
    secret = tmp_path / "secret.png"
    Image.new("L", (16, 16), 7).save(secret)
    for path in (
        "/collections/..%2Fsecret.png",
        "/collections/%2E%2E/images/0",
        "/collections/demo/images/..%2F..%2Fsecret.png",
        "/collections/demo/images/0%2F..%2F..",
        "/static/..%2F..%2Fapp.py",
        "/static/../service/app.py",
    ):
        answer = client.get(path)
        assert answer.status_code in (404, 422), (path, answer.status_code)
        assert answer.content != secret.read_bytes() and b"def create_app" not in answer.content
    for name in ("..", ".", "../indexes/demo", "%2e%2e"):
        assert client.get("/collections/demo/images/0", params={"name": name}).status_code == 200  # not a parameter
        assert client.post(
            f"/verify?name={name}", files=upload(secret, field="a") + upload(secret, field="b")
        ).status_code in (404, 422)
        assert (
            client.post(
                f"/verify?model={name}", files=upload(secret, field="a") + upload(secret, field="b")
            ).status_code
            == 404
        )
    # An upload's file name is only a name: nothing is written where it points.
    evil = [("file", ("../../../evil.png", (folder / "blob/0.png").read_bytes(), "image/png"))]
    answer = client.post("/collections/demo/query", files=evil).json()
    assert answer[0]["query"] == "evil.png" and not (tmp_path / "evil.png").exists()
    # An indexed file swapped for a link out of its folder is not followed.
    target = client.post("/collections/demo/query?k=1", files=upload(folder / "vbars/3.png")).json()[0]
    (folder / "vbars/3.png").unlink()
    (folder / "vbars/3.png").symlink_to(secret)
    image_id = target["neighbours"][0]["id"]
    for params in ({}, {"thumb": 1}):
        assert "leads outside its folder" in error_of(
            client.get(f"/collections/demo/images/{image_id}", params=params), 404
        )


def test_waiting_queries_are_answered_together_each_with_its_own_answer(served: tuple[TestClient, Path, Path]) -> None:
    from simsearch.errors import ImageError

    client, _, folder = served
    inference = client.app.state.service.inference  # type: ignore[attr-defined]
    files = [folder / "hbars/0.png", folder / "vbars/1.png", folder / "blob/2.png"]

    async def together(images: list[bytes]) -> tuple[int, list[object]]:
        gate = threading.Event()
        held = asyncio.ensure_future(inference.call(gate.wait))  # the inference thread is busy …
        await asyncio.sleep(0.05)
        waiting = [
            asyncio.ensure_future(inference.query("demo", [image], [f"q{n}"], 3)) for n, image in enumerate(images)
        ]
        await asyncio.sleep(0.05)  # … while these queue up
        before = inference.batches
        gate.set()
        answers = await asyncio.gather(*waiting, return_exceptions=True)
        await held
        return inference.batches - before, answers

    runs, answers = asyncio.run(together([f.read_bytes() for f in files]))
    assert runs == 1  # one search for the three
    for n, (file, answer) in enumerate(zip(files, answers, strict=True)):
        _, results = answer  # type: ignore[misc]
        assert [r.query for r in results] == [f"q{n}"] and results[0].vote == file.parent.name
        assert (
            results[0].neighbours[0].distance == 0.0
            and results[0].neighbours[0].path == f"{file.parent.name}/{file.name}"
        )
    # A bad image fails its own request only: the batch is run again request by request.
    runs, answers = asyncio.run(together([files[0].read_bytes(), b"not an image", files[2].read_bytes()]))
    assert runs == 1 + 3
    assert isinstance(answers[1], ImageError) and answers[1].file == "q1"
    assert [a[1][0].vote for a in (answers[0], answers[2])] == ["hbars", "blob"]  # type: ignore[index]


def test_an_internal_failure_is_a_500_and_the_server_keeps_serving(
    served: tuple[TestClient, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simsearch.search import Searcher

    client, _, folder = served

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "query_files", broken)
        answer = client.post("/collections/demo/query", files=upload(folder / "blob/0.png"))
        assert "internal error (RuntimeError)" in error_of(answer, 500)
    assert client.post("/collections/demo/query", files=upload(folder / "blob/0.png")).status_code == 200


def test_an_image_indexed_while_serving_is_found_by_the_next_query(
    served: tuple[TestClient, Path, Path], tmp_path: Path
) -> None:
    from simsearch.indexing import index_folder
    from simsearch.store.collection import Collection

    client, home, folder = served
    new = folder / "cross" / "0.png"
    new.parent.mkdir()
    image = np.zeros((16, 16), np.uint8)
    image[7:9, :] = image[:, 7:9] = 255
    Image.fromarray(image).save(new)
    before = client.post("/collections/demo/query?k=1", files=upload(new)).json()[0]
    assert before["neighbours"][0]["distance"] > 0
    index_folder(folder, Collection(home / "demo"))
    after = client.post("/collections/demo/query?k=1", files=upload(new)).json()[0]
    assert after["neighbours"][0]["distance"] == 0.0 and after["vote"] == "cross"
    assert client.get("/collections/demo").json()["count"] == 16


def test_a_collection_made_after_the_start_is_served(tmp_path: Path) -> None:
    from simsearch.indexing import IndexConfig, index_folder
    from simsearch.service import create_app
    from simsearch.store.collection import Collection

    home = tmp_path / "indexes"
    client = TestClient(create_app(home, device="cpu", use_gpu=False))
    assert client.get("/collections").json() == {"collections": [], "models": []}
    files = write_folder(tmp_path / "images", per_class=2)
    index_folder(tmp_path / "images", Collection(home / "late"), IndexConfig(model="pixels", device="cpu"))
    assert client.get("/collections").json()["collections"] == ["late"]
    assert client.post("/collections/late/query?k=1", files=upload(files[0])).json()[0]["vote"] == "hbars"


def test_serve_refuses_a_public_address_without_a_token_and_a_busy_port(tmp_path: Path) -> None:
    public = invoke("serve", "--home", tmp_path, "--host", "0.0.0.0")
    assert public.exit_code == 2 and error_lines(public) == [
        "Error: serving on 0.0.0.0 (not loopback) needs a token — pass --token or set SIMSEARCH_TOKEN, "
        "or keep the default --host 127.0.0.1"
    ]
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = invoke("serve", "--home", tmp_path, "--port", busy.getsockname()[1])
    assert taken.exit_code == 2 and len(error_lines(taken)) == 1
    assert "cannot listen on 127.0.0.1:" in taken.stderr and "choose another port with --port" in taken.stderr


def test_the_real_server_starts_answers_and_stops_on_sigterm(
    small_collection: tuple[Path, Path], tmp_path: Path
) -> None:
    home, folder = small_collection
    command = [sys.executable, "-m", "simsearch", "serve", "--home", str(home), "--port", "0", "--device", "cpu"]
    command += ["--model", str(tmp_path / "model")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", banner)
        assert found, banner
        with httpx.Client(base_url=found.group(1), timeout=30) as http:
            for _ in range(100):  # the socket listens before uvicorn's loop starts serving
                try:
                    if http.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            answer = http.post("/collections/demo/query?k=2", files=upload(folder / "vbars/0.png")).json()
            assert answer[0]["vote"] == "vbars" and answer[0]["neighbours"][0]["distance"] == 0.0
            pair = upload(folder / "vbars/0.png", field="a") + upload(folder / "vbars/1.png", field="b")
            assert http.post("/verify?model=model", files=pair).json()["match"] is True
            assert http.get("/").headers["content-type"].startswith("text/html")
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0, stderr
    assert "Stopped serving." in stdout and "Traceback" not in stderr
