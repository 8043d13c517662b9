"""Where this project keeps what it can rebuild (unpacked data files, folder manifests): ``UNIXKD_CACHE_DIR``,
else ``~/.cache/unix-kd``. Read at call time through this module, so a test can point it elsewhere."""
import os

CACHE_DIR = os.environ.get("UNIXKD_CACHE_DIR", os.path.expanduser("~/.cache/unix-kd"))
