"""The HTTP server through FastAPI's TestClient (no port): page, health, captions, every bad upload."""

import io
import re
import threading

import pytest
from PIL import Image

from capgen import Captioner
from capgen.serve import ServeSettings, create_app

fastapi_testclient = pytest.importorskip("fastapi.testclient")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png(size=(48, 40), colour=(200, 40, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else 1).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_captioner):
    app = create_app(tiny_captioner, ServeSettings(max_upload_mb=0.5, max_pixels=1_000_000, timeout=20))
    with fastapi_testclient.TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def _error(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def _still_answers(client):
    r = client.post("/caption", files={"files": ("ok.png", png(), "image/png")})
    assert r.status_code == 200 and r.json()["results"][0]["caption"]


def test_health(client, tiny_captioner):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["encoder"] == "tiny-test" and h["vocab_size"] == len(tiny_captioner.vocab)
    assert h["supports_attention"] is True and "show_attend_tell" in h["model"]


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert 'type="file"' in page and "canvas" in page
    for bad in ('src="http', "src='http", 'href="http', "href='http", "https://", "http://", "@import", "url("):
        assert bad not in page, bad
    # every script and stylesheet is inline
    assert not re.search(r"<script[^>]*\bsrc=", page) and not re.search(r"<link[^>]*stylesheet", page)
    assert "/caption" in client.get("/openapi.json").text


def test_caption_one_and_several(client):
    r = client.post("/caption", files={"files": ("one.png", png(), "image/png")})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["filename"] == "one.png" and isinstance(res["caption"], str) and res["caption"]
    assert isinstance(res["score"], float) and "attention" not in res
    files = [("files", (f"p{i}.png", png(colour=(40 * i, 100, 50)), "image/png")) for i in range(3)]
    files.append(("files", ("j.jpg", jpeg(), "image/jpeg")))
    r = client.post("/caption", files=files, params={"beam_size": 2, "n_best": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["p0.png", "p1.png", "p2.png", "j.jpg"]
    assert all("alternatives" in x for x in results)


def test_attention_payload(client):
    r = client.post("/caption", files={"files": ("a.png", png(), "image/png")}, data={"attention": "true"})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    att = res["attention"]
    assert att["words"] == res["caption"].split() and att["grid"] == [4, 4]
    assert len(att["weights"]) == len(att["words"]) and all(len(w) == 16 for w in att["weights"])
    assert all(abs(sum(w) - 1) < 1e-3 for w in att["weights"])


def _float_tiff(value: float) -> bytes:
    import numpy as np

    arr = np.ones((8, 8), dtype=np.float32)
    arr[0, 0] = value
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, "TIFF")
    return buf.getvalue()


def test_bad_uploads_get_the_right_4xx(client):
    cases = [
        (400, {"files": ("empty.png", b"", "image/png")}, "empty"),
        (415, {"files": ("notes.png", b"hello, I am text pretending to be a png", "image/png")}, "not a supported"),
        (422, {"files": ("cut.jpg", jpeg((200, 160))[:300], "image/jpeg")}, "truncated"),
        # 4000 x 4000 1-bit PNG: a few KB on the wire, 16 Mpx decoded -> refused from the header
        (413, {"files": ("huge.png", png((4000, 4000), mode="1"), "image/png")}, "exceeds"),
        (422, {"file": ("one.png", png(), "image/png")}, "'files'"),
        (422, {"files": ("nan.tif", _float_tiff(float("nan")), "image/tiff")}, "NaN or infinite"),  # issue 20 #17
    ]
    for status, files, needle in cases:
        msg = _error(client.post("/caption", files=files), status)
        assert needle in msg, (status, msg)
    assert len(png((4000, 4000), mode="1")) < 100_000
    # the type comes from the content: a real PNG named .txt with a text type is accepted
    r = client.post("/caption", files={"files": ("photo.txt", png(), "text/plain")})
    assert r.status_code == 200
    _still_answers(client)


def test_oversize_body_and_other_bad_requests(client):
    big = b"\x89PNG" + b"\0" * 600_000  # over the 0.5 MB limit of this app
    assert "too large" in _error(client.post("/caption", files={"files": ("big.png", big, "image/png")}), 413)
    assert "multipart" in _error(client.post("/caption", json={"files": "x"}), 415)
    assert "beam_size" in _error(
        client.post("/caption", files={"files": ("a.png", png())}, params={"beam_size": "lots"}), 422
    )
    assert "n_best" in _error(
        client.post("/caption", files={"files": ("a.png", png())}, params={"beam_size": 2, "n_best": 5}), 422
    )
    assert "multipart" in _error(client.post("/caption", data={"files": "just text"}), 415)
    msg = _error(client.post("/caption", data={"files": "just text"}, files={"x": ("x.png", png())}), 422)
    assert "'files' is not a file" in msg
    _error(client.get("/nowhere"), 404)
    _error(client.get("/caption"), 405)
    _still_answers(client)


def test_chunked_oversize_body_is_refused(client):
    def body():  # a generator body is sent without Content-Length
        for _ in range(12):
            yield b"x" * 65536

    r = client.post("/caption", content=body(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert "too large" in _error(r, 413)
    _still_answers(client)


def test_concurrent_requests_all_succeed(client):
    out, errors = {}, []

    def go(i):
        try:
            r = client.post("/caption", files={"files": (f"c{i}.png", png(colour=(20 * i, 90, 160)), "image/png")})
            out[i] = (r.status_code, r.json())
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(out) == 8
    for i, (status, body) in out.items():
        assert status == 200 and body["results"][0]["filename"] == f"c{i}.png"


def test_timeout_gives_504_and_the_server_recovers(tiny_run):
    slow = Captioner.from_pretrained(tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder)
    real = slow.caption_encoded
    gate = threading.Event()

    def held(*a, **kw):
        gate.wait(60)  # busy until the test says so: always past the 0.2 s limit, however loaded the machine
        return real(*a, **kw)

    slow.caption_encoded = held
    app = create_app(slow, ServeSettings(timeout=0.2))
    with fastapi_testclient.TestClient(app, base_url="http://localhost") as c:
        assert "longer than" in _error(c.post("/caption", files={"files": ("a.png", png())}), 504)
        slow.caption_encoded = real
        gate.set()
        # The model thread survives the abandoned job and answers the next one. Asked directly, so
        # the check does not race the 0.2 s HTTP limit on a busy machine.
        image = Image.open(io.BytesIO(png())).convert("RGB")
        results = app.state.worker.submit([image], {"beam_size": 1}).result(timeout=60)
        assert results[0].caption
        assert "no attention" in _error(
            c.post("/caption", files={"files": ("a.png", png())}, params={"attention": "true"}), 422
        )


def _gated_captioner(tiny_run):
    """A real tiny captioner whose encoder calls (the first stage of the worker) wait for `gate`;
    `started` is set when one begins."""
    cap = Captioner.from_pretrained(tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder)
    real, gate, started = cap.encode_loaded, threading.Event(), threading.Event()

    def held(*a, **kw):
        started.set()
        gate.wait(60)
        return real(*a, **kw)

    cap.encode_loaded = held
    return cap, gate, started


def _wait_until(predicate) -> None:
    for _ in range(20_000):  # no timing assertion: only waits for a state the test itself causes
        if predicate():
            return
        threading.Event().wait(0.005)
    raise AssertionError("state never reached")


def test_overload_gets_503_with_retry_after_and_the_server_recovers(tiny_run):
    cap, gate, started = _gated_captioner(tiny_run)
    app = create_app(cap, ServeSettings(max_batch=1, max_queue=1, timeout=60))
    statuses = []

    def post(c, name):
        statuses.append(c.post("/caption", files={"files": (name, png(), "image/png")}).status_code)

    with fastapi_testclient.TestClient(app, base_url="http://localhost") as c:
        first = threading.Thread(target=post, args=(c, "a.png"))
        first.start()
        assert started.wait(60)  # the model is busy with the first request
        second = threading.Thread(target=post, args=(c, "b.png"))
        second.start()
        _wait_until(lambda: app.state.worker.pending == 1)  # the second waits in the full queue
        r = c.post("/caption", files={"files": ("c.png", png(), "image/png")})
        assert "busy" in _error(r, 503)
        assert int(r.headers["Retry-After"]) >= 1
        gate.set()
        first.join(60)
        second.join(60)
        assert statuses == [200, 200]  # the admitted requests are answered
        _still_answers(c)  # and the overload leaves nothing behind


def test_work_that_would_outlast_the_wait_limit_is_refused_at_once(monkeypatch):
    from capgen.serve import worker as worker_module
    from capgen.serve.worker import ModelWorker, ServerBusy
    from conftest import HeldCaptioner

    clock = [0.0]
    monkeypatch.setattr(worker_module.time, "perf_counter", lambda: clock[0])

    class TenSecondsPerImage(HeldCaptioner):  # a fake model on a fake clock: each image "takes" 10 s
        def captioned(self, images):
            clock[0] += 10.0 * len(images)

    model = TenSecondsPerImage()
    release, started = model.release, model.started
    worker = ModelWorker(model, max_batch=4, max_queue=100, max_wait=25.0)
    release.set()
    assert worker.submit(["a"], {}).result(60) == ["a"]  # measures the rate: 10 s per image
    release.clear()
    started.clear()
    busy = worker.submit(["b", "c"], {})  # 20 s of work: admitted
    assert started.wait(60)
    with pytest.raises(ServerBusy) as refused:  # 20 + 10 s > 25 s: refused, not left to time out
        worker.submit(["d"], {})
    assert refused.value.retry_after == 5
    release.set()
    assert busy.result(60) == ["b", "c"]
    assert worker.submit(["e"], {}).result(60) == ["e"]  # drained: admitted again
    worker.close()


def test_the_encoder_works_on_the_next_batch_while_the_decoder_is_busy(tiny_run):
    cap = Captioner.from_pretrained(tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder)
    real_encode, real_decode = cap.encode_loaded, cap.caption_encoded
    decoding, release, encoded = threading.Event(), threading.Event(), []

    def encode(images):
        encoded.append(len(images))
        return real_encode(images)

    def decode(*a, **kw):
        decoding.set()
        release.wait(60)
        return real_decode(*a, **kw)

    cap.encode_loaded, cap.caption_encoded = encode, decode
    from capgen.serve.worker import ModelWorker

    worker = ModelWorker(cap, max_batch=1)
    image = Image.open(io.BytesIO(png())).convert("RGB")
    first = worker.submit([image], {"beam_size": 1})
    assert decoding.wait(60)  # the decoder holds the first batch
    second = worker.submit([image], {"beam_size": 1})
    _wait_until(lambda: len(encoded) == 2)  # ... and the second is encoded meanwhile
    assert not first.done() and not second.done()
    release.set()
    assert first.result(60)[0].caption == second.result(60)[0].caption
    worker.close()


def test_min_and_max_words(client):
    r = client.post(
        "/caption",
        files={"files": ("a.png", png(), "image/png")},
        params={"min_words": 5, "max_words": 6, "beam_size": 2},
    )
    assert r.status_code == 200, r.text
    assert 5 <= len(r.json()["results"][0]["caption"].split()) <= 6
    assert "max_words" in _error(
        client.post("/caption", files={"files": ("a.png", png())}, params={"max_words": 0}), 422
    )
    assert "min_words" in _error(
        client.post("/caption", files={"files": ("a.png", png())}, params={"min_words": 8, "max_words": 4}), 422
    )


# ---- issue 20 #2: a pixel budget per request and per queue, checked before decoding ----------------


class _ServedHeld:
    """HeldCaptioner with what the app asks of a captioner."""

    supports_attention, tags_error = False, None

    def info(self):
        return {"architecture": "held"}

    def caption_encoded(self, images, *a, **kw):
        from capgen.result import CaptionResult

        return [CaptionResult("held", 0.0, ["held"]) for _ in super().caption_encoded(images, *a, **kw)]


def _held_app(settings, **held):
    from conftest import HeldCaptioner

    cap = type("Held", (_ServedHeld, HeldCaptioner), {})(**held)
    return cap, create_app(cap, settings)


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(monkeypatch):
    from capgen.serve import uploads

    def never(*a, **kw):
        raise AssertionError("decoded an image of a refused request")

    monkeypatch.setattr(uploads, "load_image", never)
    _, app = _held_app(ServeSettings(max_pixels=1_000_000))  # 2,000,000 per request
    big = png(size=(1000, 1000), mode="L")  # a few KB that decode to a megapixel
    with fastapi_testclient.TestClient(app, base_url="http://localhost") as c:
        files = [("files", (f"b{i}.png", big, "image/png")) for i in range(3)]
        message = _error(c.post("/caption", files=files), 413)
        assert "3,000,000 pixels" in message and "2,000,000 per request" in message
        assert app.state.pixels.held == 0


def test_images_in_progress_past_the_queue_budget_get_503_and_the_budget_comes_back():
    cap, app = _held_app(ServeSettings(max_pixels=10_000, max_queued_pixels=20_000, timeout=60))
    statuses = []
    with fastapi_testclient.TestClient(app, base_url="http://localhost") as c:

        def post(name):
            statuses.append(c.post("/caption", files={"files": (name, png(size=(100, 100)))}).status_code)

        first = threading.Thread(target=post, args=("a.png",))
        first.start()
        assert cap.started.wait(60)  # a's 10,000 pixels are held by the model
        second = threading.Thread(target=post, args=("b.png",))
        second.start()
        _wait_until(lambda: app.state.pixels.held == 20_000)  # b's wait in the queue
        r = c.post("/caption", files={"files": ("c.png", png(size=(100, 100)))})
        assert "pixels" in _error(r, 503) and int(r.headers["Retry-After"]) >= 1
        cap.release.set()
        first.join(60)
        second.join(60)
    assert statuses == [200, 200] and app.state.pixels.held == 0


def test_server_errors_name_no_path_and_memory_errors_are_503():
    from capgen.errors import CapgenError

    class Failing(_ServedHeld):
        error: Exception = CapgenError(
            "glove=True needs pyarrow (/usr/lib/python3/pyarrow/libparquet.so.2600: "
            "failed to map segment from shared object)"
        )

        def decode_config(self, **options):
            from capgen.decoding import DecodeConfig

            return options if options else DecodeConfig()  # no options: the model's defaults, for the server

        def encode_loaded(self, images):
            raise self.error

    cap = Failing()
    with fastapi_testclient.TestClient(create_app(cap), base_url="http://localhost") as c:
        message = _error(c.post("/caption", files={"files": ("a.png", png())}), 422)
        assert "failed to map segment" in message and "/usr" not in message and "libparquet" not in message
        cap.error = MemoryError()
        r = c.post("/caption", files={"files": ("a.png", png())})
        assert "out of memory" in _error(r, 503) and r.headers["Retry-After"] == "1"
        assert app_pixels_free(c)


def app_pixels_free(c) -> bool:
    return c.app.state.pixels.held == 0


def test_a_failed_lazy_load_is_not_kept(tiny_captioner, monkeypatch):
    """The tag guide (GloVe) is built at server start; a build that fails is tried again on use."""
    from capgen.errors import CapgenError
    from capgen.tags import Guide

    calls = []

    def build(cls, vocab, words):
        calls.append(1)
        if len(calls) == 1:
            raise CapgenError("out of memory while loading GloVe")
        return "built"

    monkeypatch.setattr(Guide, "build", classmethod(build))
    monkeypatch.setattr(tiny_captioner, "tagger", type("T", (), {"words": ()})())
    monkeypatch.setattr(tiny_captioner, "_guide", None)
    tiny_captioner.warm_up()  # fails: nothing kept
    assert tiny_captioner._guide is None
    assert tiny_captioner._guide_for_vocab() == "built" and calls == [1, 1]


@pytest.mark.parametrize("value", ["1_0", " 3", "3.0", "0x3", "1" * 30])
def test_integer_options_are_digits_only(client, value):
    """issue 20 #20: int() took beam_size=1_0 as 10."""
    assert "expected an integer" in _error(
        client.post("/caption", files={"files": ("a.png", png())}, params={"beam_size": value}), 422
    )
