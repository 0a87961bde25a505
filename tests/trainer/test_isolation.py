import subprocess
import sys


def test_trainer_never_imports_teacher_code():
    code = (
        "import sys, trainer.distill, trainer.methods, trainer.data\n"
        "bad = [m for m in ('open_clip', 'featcache.teachers', 'featcache.extract') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
