/*
 * Entry point of the HIL bench firmware: sets up the platform hooks, announces itself with one boot line
 * on the benchmark link, silences logging, then hands every received byte to the portable core from a
 * task pinned to one core.
 *
 * Boot line (the host tells our firmware from anything else on the port by its first words):
 *
 *     hil-bench fw <version> build <hash> chip <target> idf <idf version> kernels <esp-nn|reference>
 */
#include <cstdio>

#include "sdkconfig.h"
#include "esp_app_desc.h"
#include "esp_log.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#include "hil_core.h"
#include "port_esp.h"

namespace {

const char *TAG = "hil_bench";

// All core state, ~12 KB of frame buffers: static, never on a task stack.
hil_core_t s_core;
const hil_port_t *s_port = nullptr;

const char *kernel_name(uint8_t mode)
{
    switch (mode) {
    case HIL_KERNELS_ESP_NN:
        return "esp-nn";
    case HIL_KERNELS_REFERENCE:
        return "reference";
    default:
        return "unknown";
    }
}

void bench_task(void *)
{
    // Reloading the committed model here keeps every interpreter call on the pinned core.
    hil_core_init(&s_core, s_port);
    static uint8_t rx[512];
    for (;;) {
        const int n = port_esp_link_read(rx, sizeof rx);
        if (n > 0) {
            hil_core_feed(&s_core, rx, static_cast<uint32_t>(n));
        }
    }
}

}  // namespace

extern "C" void app_main(void)
{
    s_port = port_esp_init();
    if (port_esp_link_open() != 0) {
        ESP_LOGE(TAG, "benchmark link driver failed to install; check the HIL bench link settings");
        return;
    }

    // Written through the link itself, so it reaches the host even when the console is elsewhere. The
    // leading CRLF ends whatever the ROM and bootloader printed before us.
    char line[192];
    const int len = snprintf(line, sizeof line, "\r\nhil-bench fw %s build %s chip %s idf %s kernels %s\r\n",
                             s_port->info.fw_version, s_port->info.build_hash, s_port->info.chip,
                             esp_app_get_description()->idf_ver, kernel_name(s_port->info.kernel_mode));
    if (len > 0) {
        const uint32_t n = static_cast<uint32_t>(len) < sizeof line ? static_cast<uint32_t>(len) : sizeof line - 1;
        (void)port_esp_link_write(reinterpret_cast<const uint8_t *>(line), n);
    }

    // From here on the link carries frames only: a log line written in the middle of one would corrupt it.
    // Panic reports bypass the log and still reach the console, which is what the host should see then.
    esp_log_level_set("*", ESP_LOG_NONE);

    const BaseType_t core = portNUM_PROCESSORS > 1 ? CONFIG_HIL_TASK_CORE : 0;
    if (xTaskCreatePinnedToCore(bench_task, "hil_bench", CONFIG_HIL_TASK_STACK_SIZE, nullptr,
                                CONFIG_HIL_TASK_PRIORITY, nullptr, core) != pdPASS) {
        static const char kFail[] = "hil-bench: could not start the bench task (stack too large?)\r\n";
        (void)port_esp_link_write(reinterpret_cast<const uint8_t *>(kFail), sizeof kFail - 1);
    }
}
