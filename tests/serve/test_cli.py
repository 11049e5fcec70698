"""The command line's failures: a missing extra names it, a bad weights file is one line and exit 2."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(code_or_args, *, python_code=False):
    command = [sys.executable, "-c", code_or_args] if python_code else [sys.executable, "-m", "maskrcnn.serve",
                                                                        *code_or_args]
    environment = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_missing_extra_is_named():
    # fastapi made unimportable (a None entry in sys.modules makes `import fastapi` raise ImportError)
    done = run("import sys; sys.modules['fastapi'] = None\n"
               "from maskrcnn.serve.__main__ import main\n"
               "sys.exit(main(['--weights', 'model.pth']))", python_code=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "maskrcnn.serve: error: the serving extra is not installed (missing: fastapi); install it with "
        "pip install 'maskrcnn[serve]' (or: pip install fastapi uvicorn python-multipart)")


def test_bad_weights_is_one_line_and_exit_2(tmp_path):
    missing = run(["--weights", str(tmp_path / "none.pth")])
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"maskrcnn.serve: error: weights: no such file {str(tmp_path / 'none.pth')!r}"
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    done = run(["--weights", str(broken)])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'broken.pth'}: not a loadable checkpoint (" in done.stderr  # the file and the reason


def test_bad_option_is_a_usage_error():
    done = run(["--weights", "x.pth", "--max-batch", "0"])
    assert done.returncode == 2 and "--max-batch must be at least 1" in done.stderr
