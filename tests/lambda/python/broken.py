"""A module whose import fails: the runtime reports an init error."""
raise RuntimeError("init failed on purpose")


def handler(event, context):
    return "never"
