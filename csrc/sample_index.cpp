// Patch-level sample index, built from document lengths.
//
// A sample of T patches of K tokens reads (T+1)*K consecutive tokens of the stream formed by
// concatenating documents in `document_index` order: T*K inputs plus the next patch as labels.
// Sample j starts at stream token j*T*K (a multiple of K), so consecutive samples overlap by K.
// With K=1 this is megatron-core's token-level index (helpers.cpp build_sample_idx with
// add_extra_token_to_sequence=1, drop_last_partial_sequence=true): same array, same values.
//
// The result has num_samples+1 rows (position in document_index, token offset in that document):
// row j is the document holding stream token j*T*K, so sample j runs from row j for (T+1)*K tokens.
// With align_documents every document counts as its length rounded up to a multiple of K (the
// reader pads), so no patch spans two documents.
//
// Why C++: the walk touches every document once (10^7+ of them per epoch) through a random
// gather sizes[document_index[i]]; in NumPy that is several temporaries of the whole stream.
// Everything is int64 so corpora past 2^31 tokens and many epochs are safe.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace {

// How far ahead to prefetch sizes[document_index[i]]: the gather is random over the sizes array,
// and issuing the loads early hides most of the cache misses.
constexpr int64_t kPrefetchDistance = 32;

template <typename Index>
py::array_t<int64_t> build_sample_index(
    const py::array_t<int32_t, py::array::c_style> &sizes_array,
    const py::array_t<Index, py::array::c_style> &document_index_array,
    const int64_t patch_size,
    const int64_t num_patches,
    const int64_t num_samples,
    const bool align_documents) {
  if (patch_size < 1 || patch_size > (int64_t{1} << 30)) {
    throw std::invalid_argument("patch_size (K) must be in [1, 2^30], got " + std::to_string(patch_size));
  }
  if (num_patches < 1) {
    throw std::invalid_argument("num_patches (T) must be >= 1, got " + std::to_string(num_patches));
  }
  if (num_samples < 0) {
    throw std::invalid_argument("num_samples must be >= 0, got " + std::to_string(num_samples));
  }
  if (sizes_array.ndim() != 1 || document_index_array.ndim() != 1) {
    throw std::invalid_argument("sizes and document_index must be 1-D arrays");
  }
  const int64_t stride = patch_size * num_patches;
  // The last sample needs tokens up to num_samples*stride + K (exclusive).
  const int64_t needed_tokens = num_samples * stride + patch_size;

  const int32_t *sizes = sizes_array.data();
  const Index *document_index = document_index_array.data();
  const int64_t num_sizes = sizes_array.shape(0);
  const int64_t num_documents = document_index_array.shape(0);

  py::array_t<int64_t> result({num_samples + 1, static_cast<int64_t>(2)});
  int64_t *out = result.mutable_data();

  int64_t written = 0;           // rows of `out` filled so far
  int64_t next_start = 0;        // stream position of the next row to record
  int64_t document_begin = 0;    // stream position of document i's first token
  int64_t bad_position = -1, bad_value = 0;
  bool bad_length = false;  // else a bad document id
  {
    // Pure array work: let other Python threads (e.g. data loader workers) run meanwhile.
    py::gil_scoped_release release;
    for (int64_t i = 0; i < num_documents && document_begin < needed_tokens; ++i) {
      if (i + kPrefetchDistance < num_documents) {
        const Index ahead = document_index[i + kPrefetchDistance];
        if (ahead >= 0 && ahead < num_sizes) __builtin_prefetch(sizes + ahead);
      }
      const Index document = document_index[i];
      if (document < 0 || document >= num_sizes) {
        bad_position = i;
        bad_value = static_cast<int64_t>(document);
        break;
      }
      int64_t length = sizes[document];
      if (length < 0) {
        bad_position = i;
        bad_value = length;
        bad_length = true;
        break;
      }
      if (align_documents) {
        // 32-bit division is several times cheaper than 64-bit, and cannot overflow here:
        // length < 2^31 and K <= 2^30.
        const uint32_t k = static_cast<uint32_t>(patch_size);
        length = (static_cast<uint32_t>(length) + k - 1) / k * k;
      }
      const int64_t document_end = document_begin + length;
      while (next_start < document_end && written <= num_samples) {
        out[2 * written] = i;
        out[2 * written + 1] = next_start - document_begin;
        ++written;
        next_start += stride;
      }
      document_begin = document_end;
    }
  }
  if (bad_position >= 0) {
    throw std::invalid_argument(
        "document_index[" + std::to_string(bad_position) + "] points at a document with " +
        (bad_length ? "negative length " : "index ") +
        std::to_string(bad_value) + " (sizes has " + std::to_string(num_sizes) + " entries)");
  }
  if (document_begin < needed_tokens || written <= num_samples) {
    throw std::invalid_argument(
        "the document stream holds " + std::to_string(document_begin) + " tokens but " +
        std::to_string(num_samples) + " samples of T=" + std::to_string(num_patches) +
        " patches of K=" + std::to_string(patch_size) + " need " + std::to_string(needed_tokens));
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_sample_index, m) {
  m.doc() = "Patch-level (K-aligned) sample index over a shuffled document stream.";
  const char *doc =
      "build_sample_index(sizes: int32[n], document_index: int32|int64[m], patch_size: K, "
      "num_patches: T, num_samples: N, align_documents: bool) -> int64[N+1, 2]\n\n"
      "Row j = (position in document_index, token offset) of stream token j*T*K; sample j reads "
      "(T+1)*K tokens from there. Raises ValueError on bad input or a stream too short.";
  m.def("build_sample_index_int32", &build_sample_index<int32_t>, doc, py::arg("sizes"),
        py::arg("document_index"), py::arg("patch_size"), py::arg("num_patches"),
        py::arg("num_samples"), py::arg("align_documents") = false);
  m.def("build_sample_index_int64", &build_sample_index<int64_t>, doc, py::arg("sizes"),
        py::arg("document_index"), py::arg("patch_size"), py::arg("num_patches"),
        py::arg("num_samples"), py::arg("align_documents") = false);
}
