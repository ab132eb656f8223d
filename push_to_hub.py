"""Check a trained model folder and push its model files to the Hugging Face Hub.

python push_to_hub.py MODEL_DIR REPO_ID [--private] [--revision BRANCH] [--commit-message M] [--create-pr]
                      [--dry-run] [--token T]
"""

import sys

from multitask_encoder.hub import main

if __name__ == "__main__":
    sys.exit(main())
