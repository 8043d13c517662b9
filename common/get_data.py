"""python -m common.get_data fashion-mnist: put a data set where the loaders find it.

``make demo``, ``make teacher`` and ``make test`` reach this, so a newcomer's
two commands do all the set-up. Fashion-MNIST is tried three ways, in order:
already there (Debian's ``dataset-fashion-mnist``, ``--data-root``, the cache);
Debian's package, where this process is root and has ``apt-get``; torchvision's
download, where the network allows it. Where all three fail the one line printed
says what to run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import Callable

from common import data

APT_PACKAGE = "dataset-fashion-mnist"


def _found(root: str | None) -> str | None:
    return next((str(d) for d in data._fashion_mnist_dirs(root) if data._has_all(d)), None)


def _apt_install(log: Callable[[str], None]) -> bool:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("not root or no apt-get: skipping Debian's package")
        return False
    log(f"installing Debian's {APT_PACKAGE} (apt-get update; apt-get install)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", APT_PACKAGE]):
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            tail = (done.stderr.strip().splitlines() or ["no message"])[-1]
            log(f"{' '.join(cmd[:2])} failed: {tail}")
            return False
    return True


def _download(root: str | None, log: Callable[[str], None]) -> bool:
    log("downloading with torchvision")
    try:
        data.build_dataset("fashion-mnist", root, download=True)
    except Exception as e:  # no network, a proxy, a mirror that refuses: any of them means "not this way"
        log(f"download failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return False
    return True


def fashion_mnist(root: str | None = None, *, log: Callable[[str], None] = print) -> str:
    """Return the folder holding Fashion-MNIST, installing or downloading it if needed."""
    for attempt in (lambda: True, lambda: _apt_install(log), lambda: _download(root, log)):
        if attempt() and (where := _found(root)):
            return where
    raise data.DatasetNotFoundError(
        f"fashion-mnist is not on this machine and could not be installed or downloaded: run "
        f"'sudo apt-get install {APT_PACKAGE}' (Debian/Ubuntu), or put torchvision's FashionMNIST/raw "
        f"files under DIR and pass DATA_ROOT=DIR")


FETCHERS: dict[str, Callable[..., str]] = {"fashion-mnist": fashion_mnist}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m common.get_data", description=__doc__)
    p.add_argument("dataset", choices=sorted(FETCHERS))
    p.add_argument("--data-root", default=None)
    p.add_argument("--optional", action="store_true",
                   help="warn instead of failing when the data cannot be had (tests that need it skip)")
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"get_data: {msg}", file=sys.stderr, flush=True)

    try:
        where = FETCHERS[args.dataset](args.data_root, log=log)
    except data.DatasetNotFoundError as e:
        log(("warning: " if args.optional else "error: ") + str(e))
        sys.exit(0 if args.optional else 2)
    log(f"{args.dataset}: {where}")


if __name__ == "__main__":
    main()
