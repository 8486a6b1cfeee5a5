"""Query and path parameters are parsed strictly (ASCII digits, bounds, the UUID's
shape): what a client sends is a 400 in the documented shape, never a 500 and never a
Unicode digit read as a number; on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.helpers import assert_error, listed, submit

NINES = "9" * 5000
#: Values Python's own parsers take, or choke on: a Unicode superscript (isdigit() is
#: true, int() raises), an Arabic-Indic three (int() reads 3), 5,000 digits (int()
#: refuses more than 4,300), signs, spaces, underscores, exponents, inf and nan.
HOSTILE = ("²", "٣", NINES, "+5", " 5", "5 ", "1_0", "0x10", "1e1", "inf", "nan", "-0", "", "５")


def _echo(value: str) -> str:
    return value if len(value) <= 256 else value[:256] + "…"


async def test_limit_takes_ascii_digits_in_bounds(node, client_address):
    async with node.client(client_address) as http:
        ids = [await submit(http) for _ in range(3)]
        for value in (*HOSTILE, "0", "100001", "1.5", "9" * 10):
            r = await http.get("/api/jobs", params={"limit": value})
            assert_error(r, 400, "Invalid parameter", {"name": "limit", "value": _echo(value)})
        # The requests, percent-encoded as a client sends them.
        for raw in ("%C2%B2", "%D9%A3"):
            r = await http.get(f"/api/jobs?limit={raw}")
            assert r.status_code == 400 and r.json()["params"]["name"] == "limit", r.text
        assert await listed(http, limit="2") == ids[:2]
        assert await listed(http, limit="002") == ids[:2]
        assert await listed(http, limit="100000") == ids


async def test_wait_takes_an_ascii_decimal(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        for value in (*HOSTILE, "31", "Infinity", "1.5.5", "0,5", "."):
            r = await http.get("/api/jobs", params={"id": job_id, "wait": value})
            assert_error(r, 400, "Invalid parameter", {"name": "wait", "value": _echo(value)})
        for value in ("0", "0.01", ".01", "0.", "00.010"):
            r = await http.get("/api/jobs", params={"id": job_id, "wait": value})
            assert r.status_code == 200 and r.json()[0]["id"] == job_id, (value, r.text)


async def test_flags_are_true_or_false(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        for value in ("True", "1", "yes", "", "truE", "true ", NINES):
            r = await http.get("/api/jobs", params={"id": job_id, "intermediate": value})
            assert_error(r, 400, "Invalid parameter", {"name": "intermediate", "value": _echo(value)})
            r = await http.get("/api/jobs", params={"pending": value})
            assert_error(r, 400, "Invalid parameter", {"name": "pending", "value": _echo(value)})
        assert await listed(http, pending="true") == [job_id]
        assert await listed(http, pending="false") == []


async def test_ids_take_the_uuid_shape_in_ascii(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        arabic = "٣" * 8 + "-" + "٣" * 4 + "-" + "٣" * 4 + "-" + "٣" * 4 + "-" + "٣" * 12  # uuid.UUID took it
        for bad in (
            arabic,
            "٣" * 32,
            "{" + job_id + "}",
            "urn:uuid:" + job_id,
            job_id.replace("-", "_"),
            "+" + job_id[1:],
            NINES,
            job_id[:-1] + "g",
        ):
            r = await http.get("/api/jobs", params=[("id", job_id), ("id", bad)])
            assert_error(r, 400, "Invalid job id", {"id": _echo(bad)})
            assert_error(await http.get(f"/api/jobs/{bad}"), 400, "Invalid job id", {"id": _echo(bad)})
            r = await http.get("/api/jobs", params={"after": bad})
            assert_error(r, 400, "Invalid parameter", {"name": "after", "value": _echo(bad)})
        # The forms clients send: canonical in either case, or 32 hex digits.
        for same in (job_id, job_id.upper(), job_id.replace("-", "")):
            r = await http.get("/api/jobs", params={"id": same})
            assert r.status_code == 200 and [x["id"] for x in r.json()] == [job_id], (same, r.text)
            r = await http.get(f"/api/jobs/{same}")
            assert r.status_code == 200 and r.json()["id"] == job_id, (same, r.text)
        assert await listed(http, after=job_id.upper()) == []


async def test_no_parameter_value_is_a_500(node, client_address):
    async with node.client(client_address) as http:
        job_id = await submit(http)
        for value in (*HOSTILE, "\x00", "%", "é" * 3000, "1" * 100_00):
            for params in (
                {"limit": value},
                {"after": value},
                {"pending": value},
                {"id": job_id, "wait": value},
                {"id": job_id, "intermediate": value},
                {"id": value},
                {"model_id": value},
            ):
                path = "/resources" if "model_id" in params else "/api/jobs"
                r = await http.get(path, params=params)
                assert r.status_code < 500, (params, r.status_code, r.text[:200])
                assert r.headers["content-type"].startswith("application/json")
