"""Build the bank example into a workspace folder and answer one question with it.

python examples/bank/build.py WORKSPACE [--quick] ["my credit card was stolen"]
"""

from __future__ import annotations

import json
import sys

from slmforge.route.pipeline import build_bank_example, load_pipelines

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--quick"]
    if not args:
        sys.exit(__doc__)
    config = build_bank_example(args[0], quick="--quick" in sys.argv, progress=True)
    question = args[1] if len(args) > 1 else "my credit card was stolen"
    result = load_pipelines(config)["bank"].run(question)
    print(json.dumps(result, indent=2))
    print(f"pipelines file: {config}")
