"""What a Hugging Face hub repository id looks like (owner/name), for models and datasets alike.

Anything else given where a model or dataset is asked for is a local path.
"""

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
