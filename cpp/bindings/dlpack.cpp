#include "bindings/dlpack.h"

#include <string>

#include "rankscope/errors.h"

namespace rankscope::bindings {
namespace {

// ---- the DLPack ABI (dlpack.h v1.0), the parts we read -------------------------------------------
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned*);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr uint64_t kFlagReadOnly = 1ull << 0;
enum : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLComplex = 5, kDLBool = 6 };
enum : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 };

DType dtype_from_dl(DLDataType t, const char* what) {
  RS_CHECK(t.lanes == 1, TypeMismatch, what, ": vector dtypes (lanes=", t.lanes, ") are not supported");
  if (t.code == kDLFloat && t.bits == 16) return DType::F16;
  if (t.code == kDLFloat && t.bits == 32) return DType::F32;
  if (t.code == kDLFloat && t.bits == 64) return DType::F64;
  if (t.code == kDLBfloat && t.bits == 16) return DType::BF16;
  const char* kind = t.code == kDLComplex ? "complex" : t.code == kDLInt ? "int" : t.code == kDLUInt ? "uint"
                     : t.code == kDLBool ? "bool" : "float";
  RS_FAIL(TypeMismatch, what, ": dtype ", kind, int(t.bits),
          " is not supported; expected float16, bfloat16, float32 or float64");
}

void fill_view(ArrayView& v, const DLTensor& t, const char* what) {
  v.dtype = dtype_from_dl(t.dtype, what);
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  switch (t.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost: v.device = DeviceType::CPU; break;
    case kDLCUDA:
    case kDLCUDAManaged: v.device = DeviceType::CUDA; break;
    default: v.device = DeviceType::Other;
  }
  v.device_id = t.device.device_id;
  v.shape.assign(t.shape, t.shape + t.ndim);
  v.strides.resize(t.ndim);
  if (t.strides) {
    v.strides.assign(t.strides, t.strides + t.ndim);
  } else {  // legacy producers may omit strides for C-contiguous data
    int64_t s = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      v.strides[i] = s;
      s *= t.shape[i];
    }
  }
}

DType dtype_from_format(const std::string& fmt, ssize_t itemsize, const char* what) {
  std::string f = fmt;
  while (!f.empty() && (f[0] == '@' || f[0] == '=' || f[0] == '<')) f.erase(0, 1);
  if (f == "e" && itemsize == 2) return DType::F16;
  if (f == "f" && itemsize == 4) return DType::F32;
  if (f == "d" && itemsize == 8) return DType::F64;
  RS_FAIL(TypeMismatch, what, ": buffer format '", fmt,
          "' is not supported; expected float16, float32 or float64 (native byte order)");
}

}  // namespace

struct ImportedArray::Owner {
  DLManagedTensor* legacy = nullptr;
  DLManagedTensorVersioned* versioned = nullptr;
  std::unique_ptr<py::buffer_info> buffer;
  ~Owner() {
    if (legacy && legacy->deleter) legacy->deleter(legacy);
    if (versioned && versioned->deleter) versioned->deleter(versioned);
  }
};

ImportedArray::ImportedArray(ImportedArray&&) noexcept = default;
ImportedArray& ImportedArray::operator=(ImportedArray&&) noexcept = default;
ImportedArray::~ImportedArray() = default;

ImportedArray import_array(py::handle obj, const char* what, bool writable, int64_t stream) {
  ImportedArray out;
  out.owner_ = std::make_unique<ImportedArray::Owner>();
  if (py::hasattr(obj, "__dlpack__")) {
    py::dict kwargs;
    if (stream != kNoStream && py::hasattr(obj, "__dlpack_device__")) {
      const auto dev = obj.attr("__dlpack_device__")().cast<py::tuple>();
      const int type = dev[0].cast<int>();
      if (type == kDLCUDA || type == kDLCUDAManaged) kwargs["stream"] = py::int_(stream == 0 ? 1 : stream);
    }
    py::object cap;
    bool have = false;
    try {
      cap = obj.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0), **kwargs);
      have = true;
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError) && !e.matches(PyExc_BufferError)) throw;
    }
    if (!have) {
      try {
        cap = obj.attr("__dlpack__")(**kwargs);
        have = true;
      } catch (py::error_already_set& e) {
        // e.g. numpy refuses read-only arrays through legacy DLPack: the buffer protocol still works
        if (!e.matches(PyExc_BufferError) || !PyObject_CheckBuffer(obj.ptr())) throw;
      }
    }
    if (have) {
      PyObject* c = cap.ptr();
      if (PyCapsule_IsValid(c, "dltensor_versioned")) {
        auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(c, "dltensor_versioned"));
        RS_CHECK(m->version.major == 1, TypeMismatch, what, ": DLPack major version ", m->version.major,
                 " is not supported");
        PyCapsule_SetName(c, "used_dltensor_versioned");
        out.owner_->versioned = m;
        fill_view(out.view, m->dl_tensor, what);
        out.view.readonly = (m->flags & kFlagReadOnly) != 0;
      } else if (PyCapsule_IsValid(c, "dltensor")) {
        auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
        PyCapsule_SetName(c, "used_dltensor");
        out.owner_->legacy = m;
        fill_view(out.view, m->dl_tensor, what);
      } else {
        RS_FAIL(TypeMismatch, what, ": __dlpack__ returned something that is not a DLPack capsule");
      }
      RS_CHECK(!(writable && out.view.readonly), InvalidArgument, what, " is read-only");
      return out;
    }
  }
  if (PyObject_CheckBuffer(obj.ptr())) {
    auto buf = py::reinterpret_borrow<py::buffer>(obj);
    // Requested read-only and checked here: asking for a writable buffer raises a bare BufferError
    // that does not name the argument.
    out.owner_->buffer = std::make_unique<py::buffer_info>(buf.request(false));
    const py::buffer_info& info = *out.owner_->buffer;
    RS_CHECK(!(writable && info.readonly), InvalidArgument, what, " is read-only");
    out.view.dtype = dtype_from_format(info.format, info.itemsize, what);
    out.view.data = info.ptr;
    out.view.readonly = info.readonly;
    out.view.shape.assign(info.shape.begin(), info.shape.end());
    out.view.strides.resize(info.ndim);
    for (ssize_t i = 0; i < info.ndim; ++i) {
      RS_CHECK(info.strides[i] % info.itemsize == 0, InvalidArgument, what,
               ": strides that are not a multiple of the item size are not supported");
      out.view.strides[i] = info.strides[i] / info.itemsize;
    }
    return out;
  }
  RS_FAIL(TypeMismatch, what, ": expected an array (an object with __dlpack__ or the buffer protocol), got ",
          std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
}

}  // namespace rankscope::bindings
