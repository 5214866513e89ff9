/* Decode one rectangle of a JPEG with libjpeg(-turbo), at a DCT scale of 1/1, 1/2, 1/4 or 1/8.
 *
 * dcjax's training view (dcjax/data/jpeg_region.py, which builds and loads this file) needs only the
 * rows and columns of its random crop: rows above the crop are entropy-decoded but not transformed
 * (jpeg_skip_scanlines), rows below are never read, and columns outside the crop's iMCU columns are
 * not transformed (jpeg_crop_scanline). The pixels returned are those of the full decode at the same
 * scale (tests/test_jpeg_region.py checks this bit for bit).
 *
 * Errors never exit the process: libjpeg's error_exit is routed back here with longjmp and the call
 * returns a negative code with libjpeg's message.
 */
#include <setjmp.h>
#include <stdio.h>

#include <jpeglib.h>
#include <jerror.h>

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  char *message; /* caller's buffer, DCJAX_MESSAGE bytes */
} dcjax_error;

#define DCJAX_MESSAGE 200

static void dcjax_error_exit(j_common_ptr cinfo) {
  dcjax_error *err = (dcjax_error *)cinfo->err;
  char buffer[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buffer);
  if (err->message) snprintf(err->message, DCJAX_MESSAGE, "%s", buffer);
  longjmp(err->jump, 1);
}

/* Warnings: decode on, as Pillow does, except at a truncated stream (Pillow refuses those too). */
static void dcjax_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) dcjax_error_exit(cinfo);
}

/* info[0..3] = width, height, colour space of the stream (libjpeg's J_COLOR_SPACE), components.
 * Returns 0, or -1 with `message` set. */
int dcjax_jpeg_header(const unsigned char *data, unsigned long size, int *info, char *message) {
  struct jpeg_decompress_struct cinfo;
  dcjax_error err;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = dcjax_error_exit;
  err.pub.emit_message = dcjax_warning;
  err.message = message;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  info[0] = (int)cinfo.image_width;
  info[1] = (int)cinfo.image_height;
  info[2] = (int)cinfo.jpeg_color_space;
  info[3] = cinfo.num_components;
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

/* Decodes rows [y0, y1) and at least columns [x0, x1) of the image scaled by scale_num/scale_denom
 * (libjpeg's DCT scaling: 1/8 to 8/8 in eighths), as RGB, into `out` (rows of region[2] * 3 bytes,
 * capacity `capacity` bytes). region = (x, y, width, height) of what was written: libjpeg widens the
 * columns to whole iMCUs, and a column at a cropped edge has its chroma upsampled as at an image
 * edge, so one more column is asked for on each side: columns [x0, x1) are the full decode's, bit for
 * bit. Returns 0; -1 with `message` on a libjpeg error; -2 when the colour space is not YCbCr or
 * greyscale (the caller decodes another way); -3 when the region is empty, outside the image or
 * larger than `capacity`. */
int dcjax_jpeg_decode_region(const unsigned char *data, unsigned long size, int scale_num,
                             int scale_denom,
                             int x0, int y0, int x1, int y1, unsigned char *out,
                             unsigned long capacity, int *region, char *message) {
  struct jpeg_decompress_struct cinfo;
  dcjax_error err;
  volatile int started = 0;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = dcjax_error_exit;
  err.pub.emit_message = dcjax_warning;
  err.message = message;
  if (setjmp(err.jump)) {
    if (started) jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.jpeg_color_space != JCS_YCbCr && cinfo.jpeg_color_space != JCS_GRAYSCALE) {
    jpeg_destroy_decompress(&cinfo);
    return -2;
  }
  cinfo.out_color_space = JCS_RGB;
  cinfo.scale_num = (unsigned int)scale_num;
  cinfo.scale_denom = (unsigned int)scale_denom;
  jpeg_start_decompress(&cinfo);
  started = 1;
  if (x0 < 0 || y0 < 0 || x1 > (int)cinfo.output_width || y1 > (int)cinfo.output_height ||
      x0 >= x1 || y0 >= y1) {
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return -3;
  }
  int wide0 = x0 > 0 ? x0 - 1 : 0, wide1 = x1 < (int)cinfo.output_width ? x1 + 1 : x1;
  JDIMENSION xoffset = (JDIMENSION)wide0, width = (JDIMENSION)(wide1 - wide0);
  if (xoffset > 0 || width < cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoffset, &width);
  unsigned long stride = (unsigned long)width * 3;
  if (stride * (unsigned long)(y1 - y0) > capacity) {
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return -3;
  }
  if (y0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)y0);
  JSAMPROW rows[16];
  while ((int)cinfo.output_scanline < y1) {
    int first = (int)cinfo.output_scanline, n = y1 - first;
    if (n > 16) n = 16;
    for (int i = 0; i < n; i++) rows[i] = out + stride * (unsigned long)(first + i - y0);
    jpeg_read_scanlines(&cinfo, rows, (JDIMENSION)n);
  }
  region[0] = (int)xoffset;
  region[1] = y0;
  region[2] = (int)width;
  region[3] = y1 - y0;
  jpeg_abort_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}
