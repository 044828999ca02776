"""The HIL benchmark: every model × every device, bit-exact against the host reference, with figures.

Parametrized by the plugin (harness/plugin.py) from --device, --target, --model/--models and the data
options; with no options it runs every registry model on the virtual board over the bundled records.
"""

from harness.plugin import run_case


def test_model_on_device(hil, hil_case, request, record_property):
    run_case(hil, hil_case, request, record_property)
