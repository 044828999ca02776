/*
 * Model store on the `model` flash partition: the bytes of the uploaded .tflite and a commit header with
 * its size and sha256. The header lives in the partition's last erase sector and is written only after
 * every data byte, so an upload cut short (reset, lost link) never looks committed.
 *
 * Partition layout (erase_size = the partition's erase granularity, 4 KiB on SPI NOR flash):
 *
 *     [0, capacity)                 model bytes
 *     [capacity, capacity + 4 KiB)  commit header: "HILM", format u32, size u32, sha256[32], crc32 u32
 */
#ifndef HIL_MODEL_STORE_H
#define HIL_MODEL_STORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MODEL_STORE_LABEL "model"
/* Application-defined data subtype of the `model` partition in partitions.csv. */
#define MODEL_STORE_SUBTYPE 0x40
#define MODEL_STORE_HEADER_BYTES 48u

/* Find the partition. 0 on success; otherwise the store has capacity 0 and every call fails. */
int model_store_init(void);
/* Largest model the store accepts (partition size minus the header sector). */
uint32_t model_store_capacity(void);
/* Forget the committed model and erase room for `size` bytes (header sector first). */
int model_store_begin(uint32_t size);
int model_store_write(uint32_t offset, const uint8_t *data, uint32_t len);
/* The stored bytes: flash mapped into the data address space, or a RAM copy (CONFIG_HIL_MODEL_IN_RAM).
 * Valid until the next model_store_begin. NULL when nothing is stored or mapping fails. */
const uint8_t *model_store_data(void);
/* Persist size and sha256 of the bytes just written. */
int model_store_commit(uint32_t size, const uint8_t sha256[32]);
/* 0 and size/sha256 filled when a committed header is present and intact. */
int model_store_committed(uint32_t *size, uint8_t sha256[32]);

#ifdef __cplusplus
}
#endif

#endif
