#include "server/settings.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "core/kernels/qmm.h"
#include "core/precision.h"

namespace qlinear {
namespace {

using Type = SettingSpec::Type;

const SettingSpec* Find(const std::string& name) {
  for (const SettingSpec& s : ServerSettingSpecs()) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

// Check validates one value of `spec` given by `where` (a flag or a
// variable); the message names both and what is allowed.
absl::Status Check(const SettingSpec& spec, const std::string& value, const std::string& where) {
  auto bad = [&](const std::string& allowed) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " must be ", allowed, "; got '", value.substr(0, 64), "'"));
  };
  switch (spec.type) {
    case Type::kInt: {
      int64_t v = 0;
      if (!absl::SimpleAtoi(value, &v) || v < spec.min || v > spec.max) {
        return bad(absl::StrCat("an integer in [", spec.min, ", ", spec.max, "]"));
      }
      return absl::OkStatus();
    }
    case Type::kAddress: {
      if (value.empty()) return absl::OkStatus();  // off, where the setting allows it
      const size_t colon = value.rfind(':');
      int port = -1;
      if (colon == std::string::npos || colon == 0 ||
          !absl::SimpleAtoi(value.substr(colon + 1), &port) || port < 0 || port > 65535 ||
          !std::all_of(value.begin() + static_cast<long>(colon) + 1, value.end(),
                       [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
        return bad("HOST:PORT with a port in [0, 65535] (0 picks a free port)");
      }
      return absl::OkStatus();
    }
    case Type::kChoice: {
      for (absl::string_view c : absl::StrSplit(spec.choices, '|')) {
        if (absl::AsciiStrToLower(value) == c) return absl::OkStatus();  // as the CLI's --mode
      }
      return bad(absl::StrCat("one of ", absl::StrReplaceAll(spec.choices, {{"|", ", "}})));
    }
    case Type::kBool: {
      const std::string v = absl::AsciiStrToLower(value);
      if (v == "1" || v == "true" || v == "yes" || v == "0" || v == "false" || v == "no") {
        return absl::OkStatus();
      }
      return bad("1, true, yes, 0, false or no");
    }
    case Type::kString:
    case Type::kList:
      break;
  }
  if (spec.validate != nullptr) {
    if (absl::Status s = spec.validate(value); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePrecisions(const std::string& value) {
  return PrecisionSet::Parse(value).status();
}

std::string Default(const SettingSpec& spec) {
  if (spec.computed != nullptr) return std::to_string(spec.computed());
  return spec.fallback;
}

std::string FlagWithValue(const SettingSpec& s) {
  return s.type == Type::kBool ? absl::StrCat("--", s.name)
                               : absl::StrCat("--", s.name, " ", s.value);
}

std::string DefaultInWords(const SettingSpec& s) {
  if (s.type == Type::kBool) return "off";
  if (s.computed != nullptr) return s.fallback;
  if (std::string(s.fallback).empty()) return "none";
  return s.fallback;
}

}  // namespace

int64_t DefaultMemoryMb() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return 0;
  return static_cast<int64_t>(pages) * page / 4 * 3 >> 20;
}

const std::vector<SettingSpec>& ServerSettingSpecs() {
  static const std::vector<SettingSpec> kSpecs = {
      {"listen", Type::kAddress, "HOST:PORT", "127.0.0.1:50051", 0, 0, "",
       "address of the gRPC services (port 0 picks a free port)"},
      {"threads", Type::kInt, "N", "0", 0, 1024, "", "compute threads (0 = every core)"},
      {"max-batch-rows", Type::kInt, "N", "128", 1, 1 << 20, "",
       "most rows per batch (1 disables batching)"},
      {"max-batch-delay-us", Type::kInt, "N", "0", 0, 10'000'000, "",
       "how long a non-full batch may wait for more rows"},
      {"max-queue-rows", Type::kInt, "N", "8192", 1, int64_t{1} << 32, "",
       "rows queued over all layers before RESOURCE_EXHAUSTED"},
      {"compute-slots", Type::kInt, "N", "0", 0, 64, "",
       "batches in flight at once, each on its own thread, all computing on the --threads "
       "threads, so that one batch's gather, scatter and answers overlap another's compute "
       "(0 = automatic: 2, or 1 with one compute thread)"},
      {"max-memory-mb", Type::kInt, "N", "3/4 of physical memory", 0, int64_t{1} << 30, "",
       "MiB all layers may hold (0 = unlimited)", DefaultMemoryMb},
      {"max-message-mb", Type::kInt, "N", "64", 1, 2047, "", "largest gRPC message, in MiB"},
      {"max-stream-inflight", Type::kInt, "N", "256", 1, 1 << 20, "",
       "requests in flight per ForwardStream; beyond that the server stops reading the stream"},
      {"drain-timeout-s", Type::kInt, "N", "30", 0, 86400, "",
       "on SIGINT/SIGTERM, how long to finish accepted work"},
      {"drain-delay-ms", Type::kInt, "N", "0", 0, 600000, "",
       "on SIGINT/SIGTERM, how long to keep serving while /readyz and gRPC health say "
       "draining, before the drain stops accepting (the time load balancers need to notice; "
       "a second signal ends it)"},
      {"model", Type::kList, "PATH", "", 0, 0, "",
       "a .safetensors file or an mlx-lm model folder to serve (repeatable): MLX triplets as "
       "they are, float .weight tensors quantized with --mode/--bits/--group-size"},
      {"mode", Type::kChoice, "M", "affine", 0, 0, "affine|mxfp4|mxfp8|nvfp4",
       "how float weights of --model are quantized"},
      {"bits", Type::kInt, "B", "", 2, 8, "", "bits for float weights (default: the mode's)"},
      {"group-size", Type::kInt, "G", "", 16, 128, "",
       "group size for float weights (default: the mode's)"},
      {"state-dir", Type::kString, "DIR", "", 0, 0, "",
       "keep every uploaded layer in DIR (synced before the upload answers) and serve them "
       "again at the next start; with neither --model nor --state-dir the server serves "
       "layer 'demo' (4096x4096, affine b4 g64, seeded random float16 weights)"},
      {"precisions", Type::kString, "LIST", "exact,int8,bf16", 0, 0, "exact|int8|bf16",
       "the precisions a Forward may ask for, comma-separated; a request for another is "
       "INVALID_ARGUMENT naming these",
       nullptr, ValidatePrecisions},
      {"simd", Type::kChoice, "T", "best", 0, 0, kSimdChoices,
       "the best kernel target to use: the CPU's best, or a lower one"},
      {"kernel", Type::kChoice, "S", "auto", 0, 0, kKernelChoices,
       "how EXACT products on AVX-512 use the cores: auto (the register kernel on every CPU "
       "measured), register, or the GEMM-style panel; the same bits"},
      {"metrics-listen", Type::kAddress, "HOST:PORT", "127.0.0.1:9464", 0, 0, "",
       "HTTP address of /metrics, /healthz and /readyz (port 0 picks a free port; empty "
       "turns it off)"},
      {"admin-listen", Type::kAddress, "HOST:PORT", "", 0, 0, "",
       "serve the Admin plane on its own listener here (e.g. 127.0.0.1:50052), and no Admin "
       "method on --listen; empty: Admin on --listen (docs/security.md)"},
      {"tls-cert", Type::kString, "FILE", "", 0, 0, "",
       "PEM certificate chain of both gRPC listeners (with --tls-key): TLS instead of "
       "plaintext"},
      {"tls-key", Type::kString, "FILE", "", 0, 0, "", "PEM private key of --tls-cert (unencrypted)"},
      {"tls-client-ca", Type::kString, "FILE", "", 0, 0, "",
       "PEM CA certificates: every client must present a certificate they signed (mTLS; "
       "probes then use the HTTP /readyz)"},
      {"tls-reload-s", Type::kInt, "N", "60", 1, 86400, "",
       "how often the TLS files are re-read, so that replaced certificates apply without a "
       "restart"},
      {"data-token-file", Type::kString, "FILE", "", 0, 0, "",
       "bearer tokens of the Data plane, one per line (NAME:TOKEN or TOKEN); re-read on "
       "SIGHUP; none: Data is open"},
      {"admin-token-file", Type::kString, "FILE", "", 0, 0, "",
       "bearer tokens of the Admin plane (which may also call Data); re-read on SIGHUP; none: "
       "Admin is open unless --data-token-file is given"},
      {"log-format", Type::kChoice, "F", "text", 0, 0, "text|json",
       "the event log on stderr: one line per event, as text or JSON lines"},
      {"access-log", Type::kBool, "", "", 0, 0, "",
       "also log one line per Forward (request id, layer, rows, code, queue and compute us)"},
  };
  return kSpecs;
}

std::string EnvName(const SettingSpec& spec) {
  std::string name = absl::StrCat("QLINEAR_", spec.name);
  for (char& c : name) c = c == '-' ? '_' : absl::ascii_toupper(c);
  return name;
}

absl::StatusOr<Settings> Settings::Parse(int argc, char** argv,
                                         const std::function<const char*(const char*)>& getenv) {
  Settings settings;
  for (const SettingSpec& spec : ServerSettingSpecs()) settings.values_[spec.name] = {};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg.substr(0, 64), "'"));
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    const SettingSpec* spec = Find(name);
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name.substr(0, 64)));
    }
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (spec->type == Type::kBool) {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value (", spec->value, ")"));
    }
    const std::string where = absl::StrCat("--", name);
    if (absl::Status s = Check(*spec, value, where); !s.ok()) return s;
    Value& v = settings.values_[name];
    if (v.set && spec->type != Type::kList) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " was given twice"));
    }
    v.set = true;
    v.source = where;
    v.text = value;
    v.list.push_back(value);
  }
  for (const SettingSpec& spec : ServerSettingSpecs()) {
    Value& v = settings.values_[spec.name];
    if (v.set) continue;  // the flag wins
    const std::string env = EnvName(spec);
    const char* text = getenv(env.c_str());
    if (text == nullptr) continue;
    v.set = true;
    v.source = env;
    v.text = text;
    if (spec.type == Type::kList) {
      for (absl::string_view item : absl::StrSplit(v.text, ',', absl::SkipEmpty())) {
        v.list.emplace_back(item);
      }
    } else {
      v.list = {v.text};
      if (absl::Status s = Check(spec, v.text, env); !s.ok()) return s;
    }
  }
  return settings;
}

const Settings::Value& Settings::Get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) {
    std::fprintf(stderr, "qlinear-server: internal error: no setting '%s'\n", name.c_str());
    std::abort();  // a typo in the server's own code, never input
  }
  return it->second;
}

int64_t Settings::Int(const std::string& name) const {
  const Value& v = Get(name);
  std::string text = v.set ? v.text : Default(*Find(name));
  int64_t out = 0;
  return absl::SimpleAtoi(text, &out) ? out : 0;
}

const std::string& Settings::String(const std::string& name) const {
  const Value& v = Get(name);
  if (v.set) return v.text;
  static const auto* defaults = [] {
    auto* m = new std::map<std::string, std::string>();
    for (const SettingSpec& s : ServerSettingSpecs()) (*m)[s.name] = Default(s);
    return m;
  }();
  return defaults->at(name);
}

bool Settings::Bool(const std::string& name) const {
  const Value& v = Get(name);
  if (!v.set) return false;
  const std::string t = absl::AsciiStrToLower(v.text);
  return t == "1" || t == "true" || t == "yes";
}

const std::vector<std::string>& Settings::List(const std::string& name) const {
  return Get(name).list;
}

bool Settings::IsSet(const std::string& name) const { return Get(name).set; }

std::string Settings::Source(const std::string& name) const { return Get(name).source; }

std::vector<std::pair<std::string, std::string>> Settings::Summary() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const SettingSpec& s : ServerSettingSpecs()) {
    const Value& v = Get(s.name);
    std::string value = s.type == Type::kList   ? absl::StrJoin(v.list, ",")
                        : s.type == Type::kBool ? (Bool(s.name) ? "true" : "false")
                        : s.type == Type::kInt  ? std::to_string(Int(s.name))
                                                : String(s.name);
    if (s.type == Type::kInt && !v.set && std::string(s.fallback).empty()) value = "default";
    out.emplace_back(s.name, value);
  }
  return out;
}

std::string HelpText() {
  std::string text = "usage: qlinear-server [flags]\n";
  for (const SettingSpec& s : ServerSettingSpecs()) {
    std::string flag = FlagWithValue(s);
    std::string help = s.help;
    if (s.type == Type::kChoice) absl::StrAppend(&help, " (", s.choices, ")");
    if (s.type == Type::kString && *s.choices != '\0') {
      absl::StrAppend(&help, " (of ", absl::StrReplaceAll(s.choices, {{"|", ","}}), ")");
    }
    absl::StrAppend(&help, "; default ", DefaultInWords(s), "; env ", EnvName(s));
    absl::StrAppend(&text, "  ", flag, std::string(flag.size() < 26 ? 26 - flag.size() : 1, ' '),
                    help, "\n");
  }
  absl::StrAppend(&text,
                  "Every flag can come from the environment variable shown (the flag wins); "
                  "--model there is a comma-separated list.\n");
  return text;
}

std::string FlagsMarkdown() {
  std::string text =
      "| flag | environment | default | allowed | meaning |\n|---|---|---|---|---|\n";
  for (const SettingSpec& s : ServerSettingSpecs()) {
    std::string allowed;
    switch (s.type) {
      case Type::kInt:
        allowed = absl::StrCat(s.min, " to ", s.max);
        break;
      case Type::kChoice:
        allowed = absl::StrReplaceAll(s.choices, {{"|", ", "}});
        break;
      case Type::kAddress:
        allowed = "HOST:PORT";
        break;
      case Type::kBool:
        allowed = "flag";
        break;
      case Type::kList:
        allowed = "repeatable";
        break;
      case Type::kString:
        allowed = *s.choices != '\0'
                      ? absl::StrCat("comma-separated, of ", absl::StrReplaceAll(s.choices, {{"|", ", "}}))
                      : "text";
        break;
    }
    absl::StrAppend(&text, "| `", FlagWithValue(s), "` | `", EnvName(s), "` | ", DefaultInWords(s),
                    " | ", allowed, " | ", s.help, " |\n");
  }
  return text;
}

}  // namespace qlinear
