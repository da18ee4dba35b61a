"""Screenshot a page of the Dagster UI served for an existing LEARNALIGN_HOME (docs figures).

    python scripts/ui_screenshot.py --home <LEARNALIGN_HOME> --page "assets/pretrained_policy?view=events" \
        --wait-for "converted_from" --out docs/smollm2_lineage.png

Starts dagster-webserver on a free loopback port for this code location against the home's instance, opens the page
in Debian's headless Chromium (chromedriver, selenium: the test extra), waits until `--wait-for` text is on the page,
saves the screenshot and stops the server. Nothing in the home is written.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the UI tests use
from testing_utils import chrome, open_ui_page  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(home: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    workspace = workdir / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: learnalign_pipeline.definitions\n"
        f"      location_name: learnalign_pipeline\n      working_directory: {ROOT}\n"
    )
    env = {**os.environ, "LEARNALIGN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    env["PYTHONPATH"] = str(ROOT)
    webserver = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent)) or "dagster-webserver"
    log = open(workdir / "webserver.log", "w")
    process = subprocess.Popen(
        [webserver, "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # importing torch and transformers takes minutes on a loaded 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster-webserver exited with {process.returncode}: see {workdir / 'webserver.log'}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("dagster-webserver did not answer within 600 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="the LEARNALIGN_HOME whose instance is shown")
    parser.add_argument("--page", required=True, help="the UI path, e.g. 'assets/pretrained_policy?view=events'")
    parser.add_argument("--wait-for", required=True, help="text that is on the page once it has rendered")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    if not (args.home / "dagster_home").is_dir():
        raise SystemExit(f"{args.home}/dagster_home does not exist: give the LEARNALIGN_HOME of a finished run")
    with tempfile.TemporaryDirectory(prefix="learnalign-ui-") as workdir:
        process, url = _serve(args.home.resolve(), Path(workdir))
        driver = chrome(str(Path(workdir) / "profile"))
        try:
            open_ui_page(driver, f"{url}/{args.page}", f"//*[contains(normalize-space(), '{args.wait_for}')]")
            time.sleep(2)  # let the layout settle
            if not driver.save_screenshot(str(args.out)):
                raise SystemExit(f"the screenshot could not be written to {args.out}")
        finally:
            driver.quit()
            process.terminate()
            process.wait(timeout=30)
    print(f"{args.out}: {url}/{args.page}")


if __name__ == "__main__":
    main()
