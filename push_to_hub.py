"""Check a trained model folder and push its model files to the Hugging Face Hub.

python push_to_hub.py MODEL_DIR REPO_ID --trust-remote-code [--private] [--revision BRANCH] [--commit-message M]
                      [--create-pr] [--dry-run] [--token T] [--debug]

--trust-remote-code lets the last check run the folder's .py files (it loads the folder as a user of the repo
would); without it the push is refused before that check. See multitask_encoder/hub.py.
"""

import sys

from multitask_encoder.hub import main

if __name__ == "__main__":
    sys.exit(main())
