"""The pretext tasks' command lines, one module per task (``<name>.py``, registered with
``@register_options("<name>")``): option groups and preset defaults, without torch, so that
``scripts/pretrain.py --task <name> --help`` answers without importing the task's model code. See
:class:`detr_ssl.config.PretextOptions`.
"""
