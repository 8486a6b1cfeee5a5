"""The CLI as a user runs it (a real process): a database that cannot be reached, or a URL
that is not one, ends every command — ``serve`` too — with one line on stderr and a
non-zero status, never a traceback; ``--version``, ``--help``, ``db prune --days``.

The PostgreSQL server here trusts every local connection, so a wrong password cannot be
produced; a role the server does not know is refused at the same step (authentication,
SQLSTATE 28000, the parent of the wrong-password error 28P01), and so is tested instead.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest
from sqlalchemy.engine import make_url

from tests.support import free_port
from tests.support import run_jobnode as jobnode

JOB_ID = "4b6f7a52-3c1e-4d2a-9f0b-8e5d6c7a1b2c"  # fixed: a test id, the same in every pytest-xdist worker
#: Every command that opens the database.
DATABASE_COMMANDS = [
    ["db", "current"],
    ["db", "upgrade"],
    ["db", "prune"],
    ["stats"],
    ["jobs", "list"],
    ["jobs", "show", JOB_ID],
    ["jobs", "cancel", JOB_ID],
    ["jobs", "retry", JOB_ID],
    ["jobs", "retry", "--all-failed"],
    ["serve", "--port", "0"],
]


def assert_one_line_error(done: subprocess.CompletedProcess[str], status: int, starts: str) -> None:
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(starts), done.stderr
    assert done.stdout == "", done.stdout


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_refused_connection_is_one_line(command, tmp_path):
    url = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/x"
    done = jobnode(*command, cwd=tmp_path, JOBNODE_DATABASE_URL=url)
    assert_one_line_error(done, 1, "Error: database unavailable: ConnectionRefusedError: ")


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=" ".join)
def test_a_sqlite_file_that_cannot_be_opened_is_one_line(command, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-directory' / 'jobnode.db'}"
    done = jobnode(*command, cwd=tmp_path, JOBNODE_DATABASE_URL=url)
    assert_one_line_error(done, 1, "Error: database unavailable: OperationalError: unable to open database file")


@pytest.mark.parametrize("command", [["db", "upgrade"], ["jobs", "list"], ["serve", "--port", "0"]], ids=" ".join)
def test_a_role_or_database_the_server_refuses_is_one_line(command, tmp_path, postgresql_url):
    url = make_url(postgresql_url)
    no_role = url.set(username="jobnode_no_such_role").render_as_string(hide_password=False)
    done = jobnode(*command, cwd=tmp_path, JOBNODE_DATABASE_URL=no_role)
    assert_one_line_error(done, 1, "Error: database unavailable: InvalidAuthorizationSpecificationError: ")
    assert 'role "jobnode_no_such_role" does not exist' in done.stderr
    no_database = url.set(database=f"jobnode_missing_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)
    done = jobnode(*command, cwd=tmp_path, JOBNODE_DATABASE_URL=no_database)
    assert_one_line_error(done, 1, "Error: database unavailable: InvalidCatalogNameError: ")


def test_serve_with_workers_says_the_same_one_line(tmp_path):
    url = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/x"
    done = jobnode(
        "serve",
        "--port",
        "0",
        cwd=tmp_path,
        JOBNODE_DATABASE_URL=url,
        JOBNODE_WORKERS="2",
        JOBNODE_MANAGE_CONTAINERS="false",
    )
    assert_one_line_error(done, 1, "Error: database unavailable: ConnectionRefusedError: ")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("garbage", "invalid database URL 'garbage'"),
        ("mysql://root@127.0.0.1/jobs", "invalid database URL: jobnode does not run on mysql://"),
        ("postgresql://postgres@127.0.0.1/postgres", "jobnode does not run on postgresql://"),
        ("sqlite:///jobnode.db", "jobnode does not run on sqlite://"),
    ],
)
@pytest.mark.parametrize("command", [["db", "current"], ["stats"], ["serve"], ["config", "check"]], ids=" ".join)
def test_a_url_that_is_not_one_the_node_runs_on_is_a_configuration_error(url, says, command, tmp_path):
    done = jobnode(*command, cwd=tmp_path, JOBNODE_DATABASE_URL=url)
    assert_one_line_error(done, 2, "Error: invalid configuration: JOBNODE_DATABASE_URL: database.url: ")
    assert says in done.stderr and "sqlite+aiosqlite:///" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir()), "nothing may be created"


def test_a_bad_url_in_the_file_names_the_key_and_hides_a_password(tmp_path):
    (tmp_path / "node.json").write_text('{"database": {"url": "mysql://root:hunter2@db/jobs"}}')
    done = jobnode("db", "upgrade", "--config", str(tmp_path / "node.json"), cwd=tmp_path)
    assert_one_line_error(done, 2, "Error: invalid configuration: database.url: invalid database URL")
    assert "hunter2" not in done.stderr


def test_version_and_help(tmp_path):
    done = jobnode("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"jobnode {__import__('app').__version__}\n")
    for command in (["--help"], ["serve", "--help"], ["config", "check", "--help"], ["db", "prune", "--help"]):
        done = jobnode(*command, cwd=tmp_path)
        assert done.returncode == 0 and "``" not in done.stdout, done.stdout


def test_prune_days_must_be_more_than_zero(tmp_path):
    done = jobnode("db", "prune", "--days", "0", cwd=tmp_path)
    assert done.returncode == 2, done
    assert "--days" in done.stderr and "retention" not in done.stderr, done.stderr
    assert not (tmp_path / "jobnode.db").exists()
