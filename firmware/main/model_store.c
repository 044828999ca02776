/*
 * Model store on the `model` flash partition (see model_store.h for the layout). Erase before write is
 * the flash rule: begin erases the header sector first, so the previous commit is gone before any of its
 * bytes are overwritten, then the data range rounded up to whole sectors.
 */
#include "model_store.h"

#include <stddef.h>
#include <string.h>

#include "sdkconfig.h"
#include "esp_err.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "esp_partition.h"

#include "hil_core.h" /* hil_crc32 */

static const char *TAG = "model_store";

#define HEADER_MAGIC "HILM"
#define HEADER_FORMAT 1u
#define HEADER_CRC_OFFSET 44u

static const esp_partition_t *s_part;
static uint32_t s_sector;   /* erase granularity of the partition */
static uint32_t s_capacity; /* bytes available for the model */
static uint32_t s_len;      /* bytes of the model being written, or of the committed one */

static esp_partition_mmap_handle_t s_map;
static const uint8_t *s_mapped;
static uint32_t s_mapped_len;
static uint8_t *s_ram_copy;

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint32_t round_up(uint32_t n, uint32_t unit)
{
    return ((n + unit - 1u) / unit) * unit;
}

/* Any view of the old bytes must go before flash is erased: a mapping would serve stale cache lines and
 * the interpreter must not read a model that is being overwritten. */
static void release_views(void)
{
    if (s_mapped != NULL) {
        esp_partition_munmap(s_map);
        s_mapped = NULL;
        s_mapped_len = 0;
    }
    if (s_ram_copy != NULL) {
        heap_caps_free(s_ram_copy);
        s_ram_copy = NULL;
    }
}

int model_store_init(void)
{
    release_views();
    s_len = 0;
    s_part = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, (esp_partition_subtype_t)MODEL_STORE_SUBTYPE,
                                      MODEL_STORE_LABEL);
    if (s_part == NULL) {
        ESP_LOGE(TAG, "no data partition '%s' (subtype 0x%02x): flash firmware/partitions.csv", MODEL_STORE_LABEL,
                 MODEL_STORE_SUBTYPE);
        s_capacity = 0;
        return -1;
    }
    s_sector = s_part->erase_size != 0u ? s_part->erase_size : 4096u;
    if (s_part->size < 2u * s_sector) {
        ESP_LOGE(TAG, "partition '%s' is %u bytes, too small for a model and its header", MODEL_STORE_LABEL,
                 (unsigned)s_part->size);
        s_part = NULL;
        s_capacity = 0;
        return -1;
    }
    s_capacity = s_part->size - s_sector;
    return 0;
}

uint32_t model_store_capacity(void)
{
    return s_capacity;
}

int model_store_begin(uint32_t size)
{
    if (s_part == NULL || size == 0u || size > s_capacity) {
        return -1;
    }
    release_views();
    s_len = 0;
    if (esp_partition_erase_range(s_part, s_capacity, s_sector) != ESP_OK) {
        return -1;
    }
    if (esp_partition_erase_range(s_part, 0, round_up(size, s_sector)) != ESP_OK) {
        return -1;
    }
    s_len = size;
    return 0;
}

int model_store_write(uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (s_part == NULL || offset > s_len || len > s_len - offset) {
        return -1;
    }
    return esp_partition_write(s_part, offset, data, len) == ESP_OK ? 0 : -1;
}

const uint8_t *model_store_data(void)
{
    if (s_part == NULL || s_len == 0u) {
        return NULL;
    }
#if CONFIG_HIL_MODEL_IN_RAM
    if (s_ram_copy == NULL) {
        /* PSRAM when the board has it: the model is read-only and large; internal RAM otherwise. */
        s_ram_copy = heap_caps_malloc(s_len, MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
        if (s_ram_copy == NULL) {
            s_ram_copy = heap_caps_malloc(s_len, MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
        }
        if (s_ram_copy == NULL) {
            return NULL;
        }
        if (esp_partition_read(s_part, 0, s_ram_copy, s_len) != ESP_OK) {
            heap_caps_free(s_ram_copy);
            s_ram_copy = NULL;
            return NULL;
        }
    }
    return s_ram_copy;
#else
    if (s_mapped == NULL || s_mapped_len != s_len) {
        const void *ptr = NULL;
        release_views();
        if (esp_partition_mmap(s_part, 0, s_len, ESP_PARTITION_MMAP_DATA, &ptr, &s_map) != ESP_OK) {
            return NULL;
        }
        s_mapped = (const uint8_t *)ptr;
        s_mapped_len = s_len;
    }
    return s_mapped;
#endif
}

int model_store_commit(uint32_t size, const uint8_t sha256[32])
{
    uint8_t header[MODEL_STORE_HEADER_BYTES];

    if (s_part == NULL || size == 0u || size != s_len) {
        return -1;
    }
    memset(header, 0, sizeof header);
    memcpy(header, HEADER_MAGIC, 4);
    put_le32(header + 4, HEADER_FORMAT);
    put_le32(header + 8, size);
    memcpy(header + 12, sha256, 32);
    put_le32(header + HEADER_CRC_OFFSET, hil_crc32(header, HEADER_CRC_OFFSET));
    /* begin erased this sector already; erasing again keeps a second commit of the same upload correct. */
    if (esp_partition_erase_range(s_part, s_capacity, s_sector) != ESP_OK) {
        return -1;
    }
    return esp_partition_write(s_part, s_capacity, header, sizeof header) == ESP_OK ? 0 : -1;
}

int model_store_committed(uint32_t *size, uint8_t sha256[32])
{
    uint8_t header[MODEL_STORE_HEADER_BYTES];
    uint32_t stored_size;

    if (s_part == NULL) {
        return -1;
    }
    if (esp_partition_read(s_part, s_capacity, header, sizeof header) != ESP_OK) {
        return -1;
    }
    if (memcmp(header, HEADER_MAGIC, 4) != 0 || get_le32(header + 4) != HEADER_FORMAT ||
        get_le32(header + HEADER_CRC_OFFSET) != hil_crc32(header, HEADER_CRC_OFFSET)) {
        return -1;
    }
    stored_size = get_le32(header + 8);
    if (stored_size == 0u || stored_size > s_capacity) {
        return -1;
    }
    if (stored_size != s_len) {
        release_views();
        s_len = stored_size;
    }
    *size = stored_size;
    memcpy(sha256, header + 12, 32);
    return 0;
}
