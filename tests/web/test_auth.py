"""A web app for many users: tokens stored hashed, each user sees only their own jobs, CSRF on the forms, a rate
limit per user, and a trusted proxy's header as the identity."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from chemgen.cli.app import app as cli
from chemgen.errors import UsageError
from chemgen.web import jobs
from chemgen.web.app import create_app
from chemgen.web.auth import RateLimiter, UserStore
from chemgen.web.settings import WebSettings

from tests.web.conftest import ELUCIDATION


@pytest.fixture()
def settings(tmp_path) -> WebSettings:
    return WebSettings(home=tmp_path / "web", start_jobs=False, elucidation=dict(ELUCIDATION), auth="token",
                       jobs_per_minute=3)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_kept_only_as_hashes_and_revoking_ends_them(settings):
    store = UserStore(settings.home)
    token = store.add("ada")
    assert store.user_for(token) == "ada" and store.user_for(token + "x") is None and store.user_for("") is None
    text = store.path.read_text()
    assert token not in text and json.loads(text)["users"]["ada"]["token_sha256"]
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(UsageError, match="exists"):
        store.add("ada")
    store.revoke("ada")
    assert store.user_for(token) is None
    with pytest.raises(UsageError, match="no active user"):
        store.revoke("ada")
    with pytest.raises(UsageError, match="user name"):
        store.add("../root")


def test_each_user_sees_and_downloads_only_their_own_jobs(settings, uploads):
    store = UserStore(settings.home)
    ada, bob = store.add("ada"), store.add("bob")
    with TestClient(create_app(settings)) as client:
        # nobody signed in: the API says 401, a page sends the browser to sign in
        assert client.get("/api/jobs/" + "0" * 32).status_code == 401
        assert client.post("/api/elucidate", files={"ir": ("q.jdx", b"1")}).status_code == 401
        assert client.get("/elucidate", follow_redirects=False).headers["location"] == "/login?next=/elucidate"
        assert client.get("/healthz").status_code == 200
        reply = client.post("/api/elucidate", headers=bearer(ada),
                            files={"ir": ("ada-secret-name.jdx", uploads["ir"].read_bytes())})
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job"]
        folder = jobs.job_dir(settings.jobs_dir, job_id)
        assert jobs.read_json(folder / "job.json")["owner"] == "ada"
        (folder / "out").mkdir()
        (folder / "out" / "candidates.csv").write_text("rank\n1\n")
        assert client.get(f"/api/jobs/{job_id}", headers=bearer(ada)).status_code == 200
        assert client.get(f"/jobs/{job_id}/files/candidates.csv", headers=bearer(ada)).text == "rank\n1\n"
        # to bob the job does not exist: not its state, page, files, nor its name in the index
        assert client.get(f"/api/jobs/{job_id}", headers=bearer(bob)).status_code == 404
        assert client.get(f"/jobs/{job_id}", headers=bearer(bob)).status_code == 404
        assert client.get(f"/jobs/{job_id}/files/candidates.csv", headers=bearer(bob)).status_code == 404
        assert "ada-secret-name" not in client.get("/", headers=bearer(bob)).text
        assert "ada-secret-name" in client.get("/", headers=bearer(ada)).text
        # a revoked token is nobody
        store.revoke("ada")
        assert client.get(f"/api/jobs/{job_id}", headers=bearer(ada)).status_code == 401


def test_a_browser_signs_in_with_its_token_and_its_forms_need_the_csrf_token(settings, uploads):
    token = UserStore(settings.home).add("ada")
    with TestClient(create_app(settings)) as client:
        client.get("/login")
        csrf = client.cookies["chemgen_csrf"]
        refused = client.post("/login", data={"token": token, "csrf_token": "forged"}, follow_redirects=False)
        assert refused.status_code == 403
        wrong = client.post("/login", data={"token": "not-a-token", "csrf_token": csrf}, follow_redirects=False)
        assert wrong.status_code == 401
        signed = client.post("/login", data={"token": token, "csrf_token": csrf, "next": "/elucidate"},
                             follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/elucidate"
        cookie = signed.headers["set-cookie"]
        assert "chemgen_token=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        page = client.get("/elucidate")
        assert page.status_code == 200 and f'value="{csrf}"' in page.text and "ada" in page.text
        files = {"ir": ("q.jdx", uploads["ir"].read_bytes())}
        # the same form without the token (what another site could make the browser send) is refused, no job made
        forged = client.post("/elucidate", files=files, follow_redirects=False)
        assert forged.status_code == 403 and list(settings.jobs_dir.iterdir()) == []
        # and the cookie alone does not open the API to a cross-site POST
        assert client.post("/api/elucidate", files=files).status_code == 403
        sent = client.post("/elucidate", files=files, data={"csrf_token": csrf}, follow_redirects=False)
        assert sent.status_code == 303 and sent.headers["location"].startswith("/jobs/")


def test_a_user_is_held_to_their_rate_and_others_are_not(settings, uploads):
    store = UserStore(settings.home)
    ada, bob = store.add("ada"), store.add("bob")
    files = {"ir": ("q.jdx", uploads["ir"].read_bytes())}
    with TestClient(create_app(settings)) as client:
        codes = [client.post("/api/elucidate", headers=bearer(ada), files=files).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        assert client.post("/api/elucidate", headers=bearer(bob), files=files).status_code == 202
    limiter = RateLimiter(2)
    assert [limiter.allow("u", t) for t in (0.0, 1.0, 2.0, 60.5)] == [True, True, False, True]


def test_a_trusted_proxys_header_is_the_identity_and_nobody_elses(tmp_path, uploads):
    proxied = WebSettings(home=tmp_path / "web", start_jobs=False, auth="proxy", trusted_proxies=("testclient",))
    with TestClient(create_app(proxied)) as client:
        assert client.get("/api/jobs/" + "0" * 32).status_code == 401
        reply = client.post("/api/elucidate", headers={"X-Forwarded-User": "carol", "X-CSRF-Token": "t"},
                            cookies={"chemgen_csrf": "t"}, files={"ir": ("q.jdx", uploads["ir"].read_bytes())})
        assert reply.status_code == 202, reply.text
        record = jobs.read_json(jobs.job_dir(proxied.jobs_dir, reply.json()["job"]) / "job.json")
        assert record["owner"] == "carol"
    untrusted = WebSettings(home=tmp_path / "web2", start_jobs=False, auth="proxy")   # the test client is no proxy
    with TestClient(create_app(untrusted)) as client:
        assert client.get("/api/jobs/" + "0" * 32, headers={"X-Forwarded-User": "carol"}).status_code == 401
    with pytest.raises(UsageError, match="auth must be one of"):
        WebSettings(auth="password")


def test_users_are_made_and_revoked_from_the_command_line(tmp_path):
    runner = CliRunner()
    env = {"CHEMGEN_HOME": str(tmp_path)}
    made = runner.invoke(cli, ["users", "add", "dana"], env=env)
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert UserStore(tmp_path / "web").user_for(token) == "dana"
    assert "dana" in runner.invoke(cli, ["users", "list"], env=env).output
    assert runner.invoke(cli, ["users", "revoke", "dana"], env=env).exit_code == 0
    assert UserStore(tmp_path / "web").user_for(token) is None
    again = runner.invoke(cli, ["users", "revoke", "dana"], env=env)
    assert again.exit_code == 1 and "no active user" in again.output
