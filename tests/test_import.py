import subprocess
import sys


def test_import_snapset_needs_neither_torch_nor_keras():
    # None in sys.modules makes any import of that name fail, as if it were not installed.
    code = (
        "import sys\n"
        "for name in ('torch', 'keras', 'tensorflow', 'jax'):\n"
        "    sys.modules[name] = None\n"
        "import snapset\n"
        "vs = snapset.ValueSet([1, -1, 0.5, -0.5])\n"
        "assert vs.project([0.2]).tolist() == [0.5]\n"
        "assert not any(m.split('.')[0] in ('torch', 'keras') and sys.modules[m] is not None\n"
        "               for m in sys.modules)\n"
        "try:\n"
        "    import snapset.torch\n"
        "except ImportError:\n"
        "    print('torch front refused')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch front refused"
