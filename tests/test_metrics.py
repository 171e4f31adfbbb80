"""/metrics: off by default, Prometheus text when METRICS=1, behind the API key when one is set."""
from tests.conftest import image_bytes, photo, upload


def test_metrics_off_by_default(client):
    assert client.get("/metrics").status_code == 404


def test_metrics_count_requests_inference_and_memory(make_app):
    client = make_app(METRICS="1").test_client()
    client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    client.post("/api/bg/remove", data=upload(b"", "a.png"))
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'pixport_requests_total{endpoint="/api/bg/remove",status="200"} 1.0' in text
    assert 'pixport_requests_total{endpoint="/api/bg/remove",status="400"} 1.0' in text
    assert 'pixport_request_duration_seconds_count{endpoint="/api/bg/remove",status="200"} 1.0' in text
    assert 'pixport_request_duration_seconds_count{endpoint="/api/bg/remove",status="400"} 1.0' in text
    took = next(line for line in text.splitlines()
                if line.startswith('pixport_request_duration_seconds_sum{endpoint="/api/bg/remove",status="200"}'))
    assert float(took.split()[1]) > 0
    assert "pixport_inference_seconds_count 1.0" in text
    assert "pixport_queue_length 0.0" in text and "pixport_model_loaded 1.0" in text
    rss = next(line for line in text.splitlines() if line.startswith("pixport_process_rss_bytes"))
    assert float(rss.split()[1]) > 10e6
    load = next(line for line in text.splitlines() if line.startswith("pixport_model_load_seconds"))
    assert float(load.split()[1]) > 0


def test_metrics_need_the_key(make_app):
    client = make_app(METRICS="1", API_KEY="k").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200


def test_unknown_paths_share_one_series(make_app):
    """Labels come from the route pattern, so random URLs cannot grow the registry."""
    client = make_app(METRICS="1").test_client()
    for path in ("/a", "/b/c", "/api/bg/x"):
        client.get(path)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'pixport_requests_total{endpoint="unmatched",status="404"} 3.0' in text
    assert 'pixport_request_duration_seconds_count{endpoint="unmatched",status="404"} 3.0' in text
    assert "/b/c" not in text
