"""Placeholder; filled in below."""
def configure(platform_hint=None):
    return {}
