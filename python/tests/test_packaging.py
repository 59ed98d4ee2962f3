"""The wheel builds offline with the standard tooling and installs into a fresh virtual environment
that imports the installed copy, not the source tree."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Debian splits these out of the interpreter; a missing one must fail the test with the fix, not skip.
PREREQUISITES = {"pip": "python3-pip", "setuptools": "python3-setuptools", "wheel": "python3-wheel",
                 "ensurepip": "python3-venv", "venv": "python3-venv"}

IMPORT_CHECK = r"""
import json, sysconfig, importlib.metadata
import ckpt_engine_worker, ckpt_engine_worker.protocol
print(ckpt_engine_worker.__file__)
print(json.dumps({"file": ckpt_engine_worker.__file__, "protocol": ckpt_engine_worker.protocol.__file__,
                  "purelib": sysconfig.get_paths()["purelib"],
                  "version": importlib.metadata.version("ckpt-engine-worker")}))
"""


def project_version():
    with open(os.path.join(SOURCE, "pyproject.toml"), "rb") as f:
        text = f.read()
    try:
        import tomllib  # 3.11+; the regex below is for older interpreters only
        return tomllib.loads(text.decode())["project"]["version"]
    except ImportError:
        return re.search(rb'^version\s*=\s*"([^"]+)"', text, re.M).group(1).decode()


def clean_env():
    # Nothing from the caller may make the source tree (PYTHONPATH, user site) or a pip config
    # (index URLs, require-virtualenv, user = true) leak into what is being checked.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONNOUSERSITE="1")
    return env


class PackagingTest(unittest.TestCase):
    def run_checked(self, args, what, timeout, cwd):
        try:
            done = subprocess.run(args, cwd=cwd, env=clean_env(), timeout=timeout, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True)
        except subprocess.TimeoutExpired as e:
            self.fail("%s ran past %d s: %s\n%s" % (what, timeout, " ".join(args), e.output or ""))
        self.assertEqual(done.returncode, 0, "%s failed (exit %d): %s\n%s" % (
            what, done.returncode, " ".join(args), done.stdout[-4000:]))
        return done.stdout

    def test_wheel_installs_into_fresh_venv_and_imports(self):
        missing = sorted(mod for mod in PREREQUISITES if importlib.util.find_spec(mod) is None)
        packages = " ".join(sorted({PREREQUISITES[mod] for mod in missing}))
        self.assertFalse(missing, "building and installing the wheel needs the modules %s in %s; on Debian: "
                         "apt-get install -y --no-install-recommends %s" % (", ".join(missing), sys.executable, packages))
        version = project_version()
        tmp = tempfile.mkdtemp(prefix="ckpt-packaging-")
        self.addCleanup(shutil.rmtree, tmp, True)

        # setuptools builds in the source folder (build/, *.egg-info); a copy keeps python/ clean and
        # keeps leftovers of an earlier in-tree build out of this wheel.
        src = os.path.join(tmp, "src")
        shutil.copytree(SOURCE, src, ignore=shutil.ignore_patterns(
            "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".*"))
        out = os.path.join(tmp, "wheels")
        # --no-build-isolation: isolation would download setuptools; --no-index: never try the network.
        self.run_checked([sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation",
                          "-w", out, src], "building the wheel", 180, tmp)
        wheels = os.listdir(out)
        self.assertEqual(wheels, ["ckpt_engine_worker-%s-py3-none-any.whl" % version],
                         "expected one pure-Python wheel of version %s (pyproject.toml)" % version)
        wheel = os.path.join(out, wheels[0])
        with zipfile.ZipFile(wheel) as z:
            tops = {n.split("/")[0] for n in z.namelist()}
        self.assertEqual(tops, {"ckpt_engine_worker", "ckpt_engine_worker-%s.dist-info" % version},
                         "the wheel should hold the package and its metadata only (no tests)")

        # The package imports torch at import time (__init__ -> receiver -> dtypes), and torch is never
        # a declared dependency; the venv sees the system's torch (Debian's python3-torch) the way an
        # engine's environment provides its own. The venv's own pip installs, as a user would.
        venv = os.path.join(tmp, "venv")
        self.run_checked([sys.executable, "-m", "venv", "--system-site-packages", venv],
                         "creating a venv with pip (Debian: apt-get install python3-venv)", 180, tmp)
        python = os.path.join(venv, "bin", "python")
        # --ignore-installed: a copy in the system's site-packages must not satisfy the install.
        self.run_checked([python, "-m", "pip", "install", "--no-index", "--no-deps", "--ignore-installed", wheel],
                         "installing the wheel into the venv", 180, tmp)

        # Runs from an empty folder so neither the cwd nor the source tree can be on sys.path.
        cwd = os.path.join(tmp, "elsewhere")
        os.mkdir(cwd)
        lines = self.run_checked([python, "-c", IMPORT_CHECK], "importing the installed package", 120, cwd)
        found = json.loads(lines.strip().splitlines()[-1])
        purelib = os.path.realpath(found["purelib"])
        self.assertTrue(purelib.startswith(os.path.realpath(venv) + os.sep), found)
        for key in ("file", "protocol"):
            path = os.path.realpath(found[key])
            self.assertTrue(path.startswith(purelib + os.sep), "%s imported from %s, not the venv's %s" % (
                key, path, purelib))
            self.assertFalse(path.startswith(os.path.realpath(SOURCE) + os.sep), path)
        self.assertEqual(found["version"], version)


if __name__ == "__main__":
    unittest.main()
