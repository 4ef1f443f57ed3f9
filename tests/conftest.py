import os

from hypothesis import settings

# CI replays the same examples every run, so that a submission's result does not depend on luck;
# local runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
