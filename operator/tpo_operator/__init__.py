"""The TPO operator: kopf handlers (`handlers`) around a pure planner (`reconcile`) and pure
manifest builders (`jobs`). Run it with `python -m tpo_operator`."""
