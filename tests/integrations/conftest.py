"""The LiteLLM plug-in's tests. ``litellm_router_script.py`` runs inside LiteLLM's scratch venv (it imports litellm,
which the project's venv does not have): pytest's doctest collection must not import it here."""

collect_ignore = ["litellm_router_script.py"]
