#include "pipeline/media/jpeg.h"

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <jpeglib.h>

namespace diffusiond {
namespace {

constexpr std::string_view kExifHeader{"Exif\0\0", 6};

// libjpeg's default error handler exits the process; this one jumps back with the message.
struct ErrorManager {
  jpeg_error_mgr base;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void on_message(j_common_ptr) {}  // warnings are not printed

// Plain C resources only between setjmp and longjmp: no destructor is ever skipped.
struct CompressOut {
  unsigned char* data = nullptr;
  unsigned long size = 0;
  char message[JMSG_LENGTH_MAX] = {0};
};

bool compress(const RgbImage& image, int quality, const unsigned char* app1, unsigned app1_size,
              CompressOut& out) {
  jpeg_compress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.base);
  err.base.error_exit = on_error;
  err.base.output_message = on_message;
  if (setjmp(err.jump)) {
    std::memcpy(out.message, err.message, sizeof(out.message));
    jpeg_destroy_compress(&cinfo);
    std::free(out.data);
    out.data = nullptr;
    return false;
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &out.data, &out.size);
  cinfo.image_width = static_cast<JDIMENSION>(image.width);
  cinfo.image_height = static_cast<JDIMENSION>(image.height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (quality >= 90) {  // no chroma subsampling
    for (int c = 0; c < 3; ++c)
      cinfo.comp_info[c].h_samp_factor = cinfo.comp_info[c].v_samp_factor = 1;
  }
  cinfo.optimize_coding = TRUE;
  jpeg_start_compress(&cinfo, TRUE);
  if (app1 != nullptr) jpeg_write_marker(&cinfo, JPEG_APP0 + 1, app1, app1_size);
  const auto stride = static_cast<std::size_t>(image.width) * 3;
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(image.pixels.data() + cinfo.next_scanline * stride);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return true;
}

struct DecompressOut {
  int width = 0, height = 0;
  unsigned char* pixels = nullptr;  // malloc'ed, width * height * 3
  unsigned char* exif = nullptr;    // malloc'ed copy of the APP1 TIFF bytes
  unsigned exif_size = 0;
  char message[JMSG_LENGTH_MAX] = {0};
};

bool decompress(const unsigned char* data, unsigned long size, bool want_exif, DecompressOut& out) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  cinfo.err = jpeg_std_error(&err.base);
  err.base.error_exit = on_error;
  err.base.output_message = on_message;
  if (setjmp(err.jump)) {
    std::memcpy(out.message, err.message, sizeof(out.message));
    jpeg_destroy_decompress(&cinfo);
    std::free(out.pixels);
    std::free(out.exif);
    out.pixels = out.exif = nullptr;
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  if (want_exif) jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
  jpeg_read_header(&cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m != nullptr && out.exif == nullptr;
       m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > kExifHeader.size() &&
        std::memcmp(m->data, kExifHeader.data(), kExifHeader.size()) == 0) {
      out.exif_size = m->data_length - static_cast<unsigned>(kExifHeader.size());
      out.exif = static_cast<unsigned char*>(std::malloc(out.exif_size));
      if (out.exif != nullptr) std::memcpy(out.exif, m->data + kExifHeader.size(), out.exif_size);
    }
  }
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out.width = static_cast<int>(cinfo.output_width);
  out.height = static_cast<int>(cinfo.output_height);
  const std::size_t stride = static_cast<std::size_t>(out.width) * 3;
  out.pixels = static_cast<unsigned char*>(std::malloc(stride * cinfo.output_height));
  if (out.pixels == nullptr) {
    std::snprintf(out.message, sizeof(out.message), "out of memory");
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.pixels + cinfo.output_scanline * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

bool looks_like_jpeg(std::string_view b) {
  return b.size() >= 3 && static_cast<unsigned char>(b[0]) == 0xff &&
         static_cast<unsigned char>(b[1]) == 0xd8 && static_cast<unsigned char>(b[2]) == 0xff;
}

std::string encode_jpeg(const RgbImage& image, int quality, std::string_view exif_tiff) {
  if (image.width <= 0 || image.height <= 0 || image.width > 65500 || image.height > 65500 ||
      image.pixels.size() != static_cast<std::size_t>(image.width) * image.height * 3)
    throw JpegError("encode_jpeg: bad image size " + std::to_string(image.width) + "x" +
                    std::to_string(image.height));
  if (quality < 1 || quality > 100)
    throw JpegError("encode_jpeg: quality must be 1..100, got " + std::to_string(quality));
  std::string app1;
  if (!exif_tiff.empty()) {
    app1 = std::string(kExifHeader) + std::string(exif_tiff);
    if (app1.size() > 65533) throw JpegError("encode_jpeg: EXIF over 64 KiB");
  }
  CompressOut out;
  const bool ok = compress(
      image, quality, app1.empty() ? nullptr : reinterpret_cast<const unsigned char*>(app1.data()),
      static_cast<unsigned>(app1.size()), out);
  if (!ok) throw JpegError(std::string("encode_jpeg: ") + out.message);
  std::string bytes(reinterpret_cast<const char*>(out.data), out.size);
  std::free(out.data);
  return bytes;
}

RgbImage decode_jpeg(std::string_view bytes, std::string* exif_tiff) {
  if (!looks_like_jpeg(bytes)) throw JpegError("decode_jpeg: not a JPEG (no SOI marker)");
  DecompressOut out;
  if (!decompress(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                  exif_tiff != nullptr, out))
    throw JpegError(std::string("decode_jpeg: ") + out.message);
  RgbImage image;
  image.width = out.width;
  image.height = out.height;
  image.pixels.assign(out.pixels,
                      out.pixels + static_cast<std::size_t>(out.width) * out.height * 3);
  std::free(out.pixels);
  if (exif_tiff != nullptr) {
    exif_tiff->assign(out.exif != nullptr ? reinterpret_cast<const char*>(out.exif) : "",
                      out.exif_size);
  }
  std::free(out.exif);
  return image;
}

}  // namespace diffusiond
