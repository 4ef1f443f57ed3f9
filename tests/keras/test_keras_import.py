import subprocess
import sys


def test_without_keras_the_front_refuses_with_the_fix():
    code = (
        "import sys\n"
        "sys.modules['keras'] = None\n"
        "try:\n"
        "    import snapset.keras\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'snapset[keras,tensorflow]'" in result.stdout
