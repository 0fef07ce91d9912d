async def test_healthz_answers_without_token(client):
    r = await client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_openapi_schema_is_served_and_names_the_public_paths(client):
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    paths = r.json()["paths"]
    for path in ("/orders", "/orders/{order_id}", "/nodes/{node_id}", "/inventory/{node_id}/{sku}", "/healthz"):
        assert path in paths
