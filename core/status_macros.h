// Small helpers over absl::Status that Abseil 20220623 does not ship.
//
//   QLINEAR_RETURN_IF_ERROR(expr);          // returns the status if not OK
//   QLINEAR_ASSIGN_OR_RETURN(auto v, expr); // unwraps a StatusOr or returns
#ifndef QLINEAR_CORE_STATUS_MACROS_H_
#define QLINEAR_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QLINEAR_CONCAT_INNER_(a, b) a##b
#define QLINEAR_CONCAT_(a, b) QLINEAR_CONCAT_INNER_(a, b)

#define QLINEAR_RETURN_IF_ERROR(expr)              \
  do {                                             \
    ::absl::Status qlinear_status_ = (expr);       \
    if (!qlinear_status_.ok()) return qlinear_status_; \
  } while (0)

#define QLINEAR_ASSIGN_OR_RETURN(lhs, expr) \
  QLINEAR_ASSIGN_OR_RETURN_IMPL_(QLINEAR_CONCAT_(qlinear_sor_, __LINE__), lhs, expr)

#define QLINEAR_ASSIGN_OR_RETURN_IMPL_(sor, lhs, expr) \
  auto sor = (expr);                                   \
  if (!sor.ok()) return std::move(sor).status();       \
  lhs = std::move(sor).value()

#endif  // QLINEAR_CORE_STATUS_MACROS_H_
