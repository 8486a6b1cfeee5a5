async def test_submit_and_read_back(node, client_address):
    async with node.client(client_address) as http:
        r = await http.post("/api/jobs", json={"containers": ["echo"], "data": {"x": 1}})
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        r = await http.get("/api/jobs", params={"id": job_id})
        assert r.json() == [{"id": job_id, "status": "running", "result": None}]
        assert (await http.get("/api/jobs")).json() == [job_id]
    async with node.client("::1") as http6:
        assert job_id not in (await http6.get("/api/jobs")).json()
