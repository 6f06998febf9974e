// Status -> Python exception, one mapping for every binding of strata._strata:
// InvalidArgument -> ValueError, NotFound -> FileNotFoundError,
// PermissionDenied -> PermissionError, ResourceExhausted -> MemoryError,
// Unimplemented -> NotImplementedError, anything else -> RuntimeError. The
// message is the Status's own (it already says what to do).
#pragma once

#include <nanobind/nanobind.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::python {

[[noreturn]] inline void raise_status(const absl::Status& status) {
  const std::string message(status.message());
  PyObject* type = PyExc_RuntimeError;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      type = PyExc_ValueError;
      break;
    case absl::StatusCode::kNotFound:
      type = PyExc_FileNotFoundError;
      break;
    case absl::StatusCode::kPermissionDenied:
      type = PyExc_PermissionError;
      break;
    case absl::StatusCode::kResourceExhausted:
      type = PyExc_MemoryError;
      break;
    case absl::StatusCode::kUnimplemented:
      type = PyExc_NotImplementedError;
      break;
    default:
      break;
  }
  PyErr_SetString(type, message.c_str());
  throw nanobind::python_error();
}

inline void check(const absl::Status& status) {
  if (!status.ok()) raise_status(status);
}

template <typename T>
T value_or_raise(absl::StatusOr<T> s) {
  if (!s.ok()) raise_status(s.status());
  return *std::move(s);
}

}  // namespace strata::python
