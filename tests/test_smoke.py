async def test_healthz_answers_without_token(client):
    r = await client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
