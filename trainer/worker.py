"""`python -m trainer.worker`: the retraining worker (scheduled and on-demand runs). Not built yet."""

import sys

if __name__ == "__main__":
    print("The retraining worker is not built yet (see the project's issues).", file=sys.stderr)
    sys.exit(1)
