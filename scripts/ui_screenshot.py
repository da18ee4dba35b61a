"""Screenshot a page of the Dagster UI served for an existing LEARNALIGN_HOME (docs figures).

    python scripts/ui_screenshot.py --home <LEARNALIGN_HOME> --page "assets/pretrained_policy?view=events" \
        --wait-for "converted_from" --out docs/smollm2_lineage.png

Starts dagster-webserver on a free loopback port for this code location against the home's instance, opens the page
in Debian's headless Chromium (chromedriver, selenium: the test extra), waits until `--wait-for` text is on the page,
saves the screenshot and stops the server. Nothing in the home is written.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the UI tests' server and browser helpers
from testing_utils import chrome, dagster_ui, open_ui_page  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="the LEARNALIGN_HOME whose instance is shown")
    parser.add_argument("--page", required=True, help="the UI path, e.g. 'assets/pretrained_policy?view=events'")
    parser.add_argument("--wait-for", required=True, help="text that is on the page once it has rendered")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    if not (args.home / "dagster_home").is_dir():
        raise SystemExit(f"{args.home}/dagster_home does not exist: give the LEARNALIGN_HOME of a finished run")
    home = args.home.resolve()
    env = {**os.environ, "LEARNALIGN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home")}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory(prefix="learnalign-ui-") as workdir, dagster_ui(env, Path(workdir)) as url:
        driver = chrome(str(Path(workdir) / "profile"))
        try:
            open_ui_page(driver, f"{url}/{args.page}", f"//*[contains(normalize-space(), '{args.wait_for}')]")
            time.sleep(2)  # let the layout settle
            if not driver.save_screenshot(str(args.out)):
                raise SystemExit(f"the screenshot could not be written to {args.out}")
        finally:
            driver.quit()
        print(f"{args.out}: {url}/{args.page}")


if __name__ == "__main__":
    main()
