"""The instance LiteLLM's proxy names in ``config.yaml`` (``litellm_settings.callbacks``), configured by the
``UNIROUTE_*`` environment variables (:meth:`litellm_uniroute.UniRouteRouting.from_env`)::

    litellm_settings:
      callbacks: ["litellm_uniroute.proxy.handler"]
"""

from litellm_uniroute.routing import UniRouteRouting

handler = UniRouteRouting.from_env()
