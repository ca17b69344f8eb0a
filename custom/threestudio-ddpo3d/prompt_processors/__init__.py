from . import toy_prompt_processor  # noqa: F401
