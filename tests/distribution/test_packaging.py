"""The library as others get it: copied into a project's ``src/``, or installed from
the wheel into an environment whose project has a ``src`` package of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import dns
import pytest
from ci import unavailable
from paths import ROOT

from src.testing.pop3_server import POP3TestServer
from src.testing.pytest_plugin import MailAccount
from src.testing.smtp_server import ReceivedMessage, SMTPTestServer
from src.testing.tls import TestCertificates

APP_PACKAGE = '"""An application that happens to call its own package ``src``."""\n\nNAME = "app"\n'

VENDORED_CLIENT = """
    import json
    import ssl
    import sys

    import src
    from src.handlers.pop3 import POP3ProtocolHandler
    from src.handlers.smtp import SMTPConnectionPool, SMTPProtocolHandler

    config = json.loads(sys.stdin.read())
    context = ssl.create_default_context(cafile=config["cafile"])
    pool = SMTPConnectionPool(max_connections=1)
    sender = SMTPProtocolHandler(
        "127.0.0.1", config["smtp_port"], config["user"], config["password"], "tls",
        from_address="app@example.test", ssl_context=context, pool=pool,
    )
    with sender:
        result = sender.send_message(["user@example.test"], "Vendored", text_body="a copy")
    reader = POP3ProtocolHandler(
        "127.0.0.1", config["pop3_port"], config["user"], config["password"], "ssl",
        ssl_context=context,
    )
    fetched = reader.fetch_messages()
    allowed = tuple(config["allowed"])
    foreign = sorted(
        name for name, module in sys.modules.items()
        if getattr(module, "__file__", None) and not module.__file__.startswith(allowed)
    )
    print(json.dumps({
        "app": src.NAME,
        "handlers": sys.modules["src.handlers"].__file__,
        "status": result.status.value,
        "message_id": result.message_id,
        "fetched": [(m["messageIdHeader"], m["subject"], m["textBody"]) for m in fetched],
        "foreign": foreign,
    }))
"""


def test_a_vendored_copy_sends_and_fetches_with_only_the_stdlib_and_dnspython(
    tmp_path: Path,
    make_smtp_server: Callable[..., SMTPTestServer],
    pop3_server_tls: POP3TestServer,
    mail_account: MailAccount,
    mail_certs: TestCertificates,
) -> None:
    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "src" / "__init__.py").write_text(APP_PACKAGE, encoding="utf-8")
    shutil.copytree(
        ROOT / "src" / "handlers",
        app / "src" / "handlers",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (app / "client.py").write_text(textwrap.dedent(VENDORED_CLIENT), encoding="utf-8")
    # dnspython and nothing else from site-packages.
    deps = tmp_path / "deps"
    deps.mkdir()
    (deps / "dns").symlink_to(Path(dns.__file__).parent, target_is_directory=True)

    users = {mail_account.username: mail_account.password}

    def deliver(message: ReceivedMessage) -> None:
        pop3_server_tls.add_message(message.data, user=mail_account.username)

    smtp = make_smtp_server(
        tls="starttls", require_starttls=True, auth_required=True, users=users, on_message=deliver
    )
    stdlib = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")}
    config = {
        "smtp_port": smtp.port,
        "pop3_port": pop3_server_tls.port,
        "user": mail_account.username,
        "password": mail_account.password,
        "cafile": str(mail_certs.write_files(tmp_path / "certs")["ca"]),
        "allowed": [str(app), str(deps), *sorted(stdlib)],
    }
    # -S: no site, so no site-packages and none of their .pth hooks (an installed or
    # editable mailhandlers among them); PYTHONPATH is the whole search path.
    done = subprocess.run(
        [sys.executable, "-S", str(app / "client.py")],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=app,
        env={"PYTHONPATH": os.pathsep.join([str(app), str(deps)]), "PATH": os.defpath},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["app"] == "app"
    assert Path(report["handlers"]).is_relative_to(app)
    assert report["foreign"] == []
    assert report["status"] == "success"
    assert report["fetched"] == [[report["message_id"], "Vendored", "a copy"]]
    [received] = smtp.messages
    assert received.secure and received.username == mail_account.username


# -- the wheel, installed next to a project with its own ``src`` ---------------------------

APP_TESTS = """
    import src


    def test_the_app_imports_its_own_src():
        assert src.NAME == "app"
"""


def _run(command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _index_reachable(tmp_path: Path) -> bool:
    tmp_path.mkdir()
    probe = _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path), "pytest"],
        cwd=tmp_path,
        timeout=120,
    )
    return probe.returncode == 0


def _wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of what it is made of, so the checkout stays clean."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    dist = tmp_path / "dist"
    done = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = dist.glob("mailhandlers-*.whl")
    return wheel


def _entry_points(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        return archive.read(name).decode("utf-8")


@pytest.mark.slow
def test_the_installed_wheel_leaves_a_projects_own_src_and_its_tests_alone(
    tmp_path: Path,
) -> None:
    if not _index_reachable(tmp_path / "probe"):
        unavailable(
            "pip cannot reach a package index to install the wheel's dependencies",
            in_ci_reason="pip cannot reach a package index, and CI needs this test to run",
        )
    wheel = _wheel(tmp_path)
    entry_points = _entry_points(wheel)
    assert "pytest11" not in entry_points
    assert "mailhandlers = src.cli.main:main" in entry_points

    venv = tmp_path / "venv"
    done = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    python = venv / "bin" / "python"
    done = _run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[testing]", "pytest"], cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr

    app = tmp_path / "app"
    (app / "src").mkdir(parents=True)
    (app / "tests").mkdir()
    (app / "src" / "__init__.py").write_text(APP_PACKAGE, encoding="utf-8")
    (app / "tests" / "test_app.py").write_text(textwrap.dedent(APP_TESTS), encoding="utf-8")
    (app / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\npythonpath = ["."]\naddopts = "--strict-markers"\n',
        encoding="utf-8",
    )
    run = _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=app)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "Error while loading plugin" not in run.stdout + run.stderr

    # And the installed package itself works, from a directory without a ``src``.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    demo = _run([str(venv / "bin" / "mailhandlers"), "demo"], cwd=outside, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.splitlines()[-1].startswith("demo: OK — ")
    where = _run([str(python), "-c", "import src.handlers; print(src.handlers.__file__)"], outside)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stderr
