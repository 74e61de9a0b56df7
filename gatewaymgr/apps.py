from django.apps import AppConfig


class GatewayManagerConfig(AppConfig):
    name = "gatewaymgr"
    verbose_name = "Gateway Manager"
