// The event log: both formats line by line, the escaping of client-given
// strings (control characters, newlines, quotes, invalid UTF-8), one line
// per event from many threads; then the real server's lines for layer
// events, refused uploads, --access-log and drain.
#include "server/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "core/engine/catalog.h"
#include "nlohmann/json.hpp"
#include "tests/server_process.h"
#include "tests/test_util.h"

namespace qlinear {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::system_clock;

// 2025-01-02T03:04:05.678Z
Clock::time_point When() {
  using namespace std::chrono;
  return sys_days{year{2025} / 1 / 2} + hours{3} + minutes{4} + seconds{5} + milliseconds{678};
}

// What a client may send as a name: a newline that would forge a line, an
// escape sequence, quotes, a byte that is not UTF-8.
const std::string kNasty = "we\"ird name\n2025-01-01T00:00:00.000Z error forged=1 \x1b[31m\xff";

TEST(LogTest, TimestampsAreRfc3339UtcWithMilliseconds) {
  EXPECT_EQ(FormatLogTime(When()), "2025-01-02T03:04:05.678Z");
  EXPECT_EQ(FormatLogTime(Clock::time_point{}), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(FormatLogTime(Clock::time_point{} - std::chrono::milliseconds(1)),
            "1969-12-31T23:59:59.999Z");
}

TEST(LogTest, TextLineHasTimeLevelEventAndFields) {
  EXPECT_EQ(FormatLogLine(LogFormat::kText, When(), LogLevel::kWarning, "ev",
                          {{"s", "plain"},
                           {"i", int64_t{-3}},
                           {"u", uint64_t{18446744073709551615u}},
                           {"b", true},
                           {"sp", "a b"},
                           {"empty", ""}}),
            "2025-01-02T03:04:05.678Z warning ev s=plain i=-3 u=18446744073709551615 b=true "
            "sp=\"a b\" empty=\"\"\n");
  EXPECT_EQ(LogLevelName(LogLevel::kInfo), "info");
  EXPECT_EQ(LogLevelName(LogLevel::kError), "error");
  LogFormat f = LogFormat::kText;
  EXPECT_TRUE(ParseLogFormat("json", &f));
  EXPECT_EQ(f, LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("xml", &f));
}

TEST(LogTest, TextEscapesControlCharactersQuotesAndInvalidUtf8) {
  EXPECT_EQ(EscapeLogText("a\nb\r\tc"), "a\\nb\\r\\tc");
  EXPECT_EQ(EscapeLogText("\x1b[31mred"), "\\x1b[31mred");
  EXPECT_EQ(EscapeLogText(std::string("a\0b\x7f", 4)), "a\\x00b\\x7f");
  EXPECT_EQ(EscapeLogText("say \"hi\""), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(EscapeLogText("it's"), "\"it's\"");
  EXPECT_EQ(EscapeLogText("k=v"), "\"k=v\"");
  EXPECT_EQ(EscapeLogText("back\\slash"), "back\\\\slash");
  // Valid UTF-8 stays as it is; what is not UTF-8 is written byte by byte.
  EXPECT_EQ(EscapeLogText("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(EscapeLogText("\xff\xc3"), "\\xff\\xc3");
  EXPECT_EQ(EscapeLogText("\xc0\xaf"), "\\xc0\\xaf");          // overlong '/'
  EXPECT_EQ(EscapeLogText("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  // Characters that act on a terminal or hide text: C1, separators, bidi.
  EXPECT_EQ(EscapeLogText("\xc2\x85"), "\\u0085");
  EXPECT_EQ(EscapeLogText("a\xe2\x80\xa8" "b"), "a\\u2028b");
  EXPECT_EQ(EscapeLogText("\xe2\x80\xae" "cba"), "\\u202ecba");
  // Long values are cut, saying how much was left out.
  const std::string cut = EscapeLogText(std::string(5000, 'x'));
  EXPECT_EQ(cut, absl::StrCat("\"", std::string(kMaxLogValueBytes, 'x'), "...[",
                              5000 - kMaxLogValueBytes, " more bytes]\""));
}

TEST(LogTest, EveryEventIsOneLineInBothFormats) {
  for (LogFormat format : {LogFormat::kText, LogFormat::kJson}) {
    const std::string line = FormatLogLine(format, When(), LogLevel::kInfo, "upload_refused",
                                           {{"name", kNasty}, {"reason", kNasty + "\r\n"}});
    EXPECT_EQ(std::count(line.begin(), line.end(), '\n'), 1) << line;
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\x1b'), std::string::npos) << line;
    EXPECT_EQ(line.find('\r'), std::string::npos) << line;
  }
  const std::string text = FormatLogLine(LogFormat::kText, When(), LogLevel::kInfo, "e",
                                         {{"name", kNasty}});
  EXPECT_EQ(text,
            "2025-01-02T03:04:05.678Z info e name=\"we\\\"ird name\\n2025-01-01T00:00:00.000Z "
            "error forged=1 \\x1b[31m\\xff\"\n");
}

TEST(LogTest, JsonLinesParseWithTheFieldsInOrder) {
  const std::string line =
      FormatLogLine(LogFormat::kJson, When(), LogLevel::kError, "access",
                    {{"request_id", kNasty}, {"rows", int64_t{-2}},
                     {"bytes", uint64_t{18446744073709551615u}}, {"ok", false}});
  // parse() rejects invalid UTF-8: that it parses shows the line is valid.
  const auto j = nlohmann::ordered_json::parse(line);
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
  EXPECT_EQ(keys, (std::vector<std::string>{"ts", "level", "event", "request_id", "rows", "bytes", "ok"}));
  EXPECT_EQ(j["ts"], "2025-01-02T03:04:05.678Z");
  EXPECT_EQ(j["level"], "error");
  EXPECT_EQ(j["event"], "access");
  // Control characters survive as JSON escapes; the invalid byte is U+FFFD.
  std::string want = kNasty;
  want.replace(want.size() - 1, 1, "\xef\xbf\xbd");
  EXPECT_EQ(j["request_id"], want);
  EXPECT_EQ(j["rows"], -2);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), 18446744073709551615u);
  EXPECT_EQ(j["ok"], false);
  EXPECT_THAT(line, HasSubstr("\\n2025")) << "a newline is escaped";
  EXPECT_THAT(line, HasSubstr("\\u001b[31m"));
}

// The real write path: lines from many threads, through stderr into a file,
// never interleave.
TEST(LogTest, ConcurrentLinesNeverInterleaveOnStderr) {
  ScopedTempDir dir("log");
  const std::string file = dir.File("stderr");
  const int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  const int saved = dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_EQ(dup2(fd, STDERR_FILENO), STDERR_FILENO);
  const int kThreads = 8, kLines = 300;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      const std::string filler(900 + 10 * t, static_cast<char>('a' + t));
      for (int i = 0; i < kLines; ++i) {
        Log(LogLevel::kInfo, "stress", {{"thread", t}, {"i", i}, {"filler", filler}});
      }
    });
  }
  for (auto& th : threads) th.join();
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  std::ifstream in(file);
  std::string line;
  int count = 0;
  const std::regex shape(
      R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info stress thread=(\d) i=\d+ filler=([a-h]+))");
  while (std::getline(in, line)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, shape)) << line.substr(0, 200);
    const int t = std::stoi(m[1]);
    EXPECT_EQ(m[2].str(), std::string(900 + 10 * t, static_cast<char>('a' + t)));
    ++count;
  }
  EXPECT_EQ(count, kThreads * kLines);
}

TEST(LogTest, CatalogEventsAndTheAccessSwitch) {
  std::vector<std::string> lines;
  SetLogSinkForTest([&](absl::string_view l) { lines.emplace_back(l); });
  CatalogEvent e;
  e.kind = CatalogEvent::Kind::kReplaced;
  e.name = "up proj";
  e.version = 7;
  e.bytes = 1234;
  e.origin = {OriginKind::kModel, "/m/model.safetensors"};
  e.replaced_version = 3;
  LogCatalogEvent(e);
  e.kind = CatalogEvent::Kind::kUnloaded;
  e.origin = {OriginKind::kUpload, ""};
  LogCatalogEvent(e);
  SetLogSinkForTest(nullptr);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr(" info layer_replaced name=\"up proj\" version=7 bytes=1234 "
                                  "origin=model source=/m/model.safetensors replaced_version=3\n"));
  EXPECT_THAT(lines[1], HasSubstr(" info layer_unloaded name=\"up proj\" version=7 bytes=1234 "
                                  "origin=upload source=\"\"\n"));
  EXPECT_FALSE(AccessLogEnabled());
  SetAccessLog(true);
  EXPECT_TRUE(AccessLogEnabled());
  SetAccessLog(false);
}

// ---------------------------------------------------------------------------
// The real server.

std::vector<float> Random(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<float> v(count);
  for (float& f : v) f = normal(rng);
  return v;
}

template <typename T>
absl::Span<const uint8_t> Span(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

// A text line's fields: "ts", "level", "event", then every key with its
// value as written (quotes removed, escapes kept).
std::map<std::string, std::string> ParseText(const std::string& line) {
  std::map<std::string, std::string> out;
  std::vector<std::string> words;
  std::string word;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '\\' && i + 1 < line.size()) {
      // \" and \\ are the text format's own; other escapes stay as written.
      if (line[i + 1] != '"' && line[i + 1] != '\\') word.push_back(c);
      word.push_back(line[++i]);
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ' ' && !quoted) {
      words.push_back(word);
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  words.push_back(word);
  if (words.size() < 3) return out;
  out["ts"] = words[0];
  out["level"] = words[1];
  out["event"] = words[2];
  for (size_t i = 3; i < words.size(); ++i) {
    const size_t eq = words[i].find('=');
    out[words[i].substr(0, eq)] = eq == std::string::npos ? "" : words[i].substr(eq + 1);
  }
  return out;
}

class LogServerTest : public ::testing::Test {
 protected:
  LogServerTest() : dir_("log_server") {}

  std::unique_ptr<ServerProcess> Start(std::vector<std::string> args) {
    ServerProcess::Options options;
    log_ = dir_.File(absl::StrCat("server", ++servers_, ".log"));
    options.log = log_;
    args.insert(args.begin(), {"--threads=2", "--metrics-listen="});
    return std::make_unique<ServerProcess>(QLINEAR_SERVER_BINARY, args, options);
  }

  // The log's text lines that are events (stdout's banner is not).
  std::vector<std::map<std::string, std::string>> TextEvents(const std::string& event) {
    std::vector<std::map<std::string, std::string>> out;
    std::ifstream in(log_);
    std::string line;
    while (std::getline(in, line)) {
      auto fields = ParseText(line);
      if (fields["event"] == event) out.push_back(fields);
    }
    return out;
  }

  absl::StatusOr<v1::LayerInfo> Upload(Client& client, const std::string& name, uint64_t seed,
                                       bool replace) {
    v1::QuantizeHeader h;
    h.set_name(name);
    h.set_out_features(8);
    h.set_in_features(64);
    h.set_dtype(v1::F32);
    h.set_replace(replace);
    const std::vector<float> w = Random(8 * 64, seed);
    return client.Quantize(h, Span(w), {});
  }

  static v1::ForwardRequest Forward(const std::string& layer, const std::string& id,
                                    int64_t k = 64) {
    v1::ForwardRequest r;
    r.set_layer(layer);
    r.set_request_id(id);
    const std::vector<float> x = Random(static_cast<size_t>(2 * k), 5);
    r.mutable_input()->set_dtype(v1::F32);
    r.mutable_input()->add_shape(2);
    r.mutable_input()->add_shape(k);
    r.mutable_input()->set_data(x.data(), x.size() * 4);
    return r;
  }

  ScopedTempDir dir_;
  std::string log_;
  int servers_ = 0;
};

TEST_F(LogServerTest, LayerEventsRefusalsAndDrainInText) {
  auto server = Start({});  // serves the built-in demo layer
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  auto client = Client::Connect(server->target());
  auto v1 = Upload(*client, "x", 1, false);
  ASSERT_TRUE(v1.ok()) << v1.status();
  auto v2 = Upload(*client, "x", 2, true);
  ASSERT_TRUE(v2.ok()) << v2.status();
  auto taken = Upload(*client, "x", 3, false);
  ASSERT_EQ(taken.status().code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(client->Unload("x").ok());
  ASSERT_TRUE(client->Forward(Forward("demo", "no-access-line", 4096)).ok());
  EXPECT_EQ(server->Stop(SIGTERM), 0);

  auto starting = TextEvents("starting");
  ASSERT_EQ(starting.size(), 1u) << server->Log();
  EXPECT_EQ(starting[0]["threads"], "2");
  EXPECT_EQ(starting[0]["log-format"], "text");
  EXPECT_EQ(starting[0]["access-log"], "false");
  EXPECT_TRUE(std::regex_match(starting[0]["ts"],
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
  auto listening = TextEvents("listening");
  ASSERT_EQ(listening.size(), 1u);
  EXPECT_EQ(listening[0]["address"], server->target());
  EXPECT_EQ(listening[0]["layers"], "1");
  EXPECT_FALSE(listening[0]["simd_target"].empty());
  EXPECT_THAT(server->Log(), HasSubstr("qlinear-server listening on " + server->target()));

  auto published = TextEvents("layer_published");
  ASSERT_EQ(published.size(), 2u) << server->Log();
  EXPECT_EQ(published[0]["name"], "demo");
  EXPECT_EQ(published[0]["origin"], "builtin");
  EXPECT_EQ(published[1]["name"], "x");
  EXPECT_EQ(published[1]["version"], std::to_string(v1->version()));
  EXPECT_EQ(published[1]["bytes"], std::to_string(v1->bytes_held()));
  EXPECT_EQ(published[1]["origin"], "upload");
  EXPECT_EQ(published[1]["source"], "");
  auto replaced = TextEvents("layer_replaced");
  ASSERT_EQ(replaced.size(), 1u);
  EXPECT_EQ(replaced[0]["name"], "x");
  EXPECT_EQ(replaced[0]["version"], std::to_string(v2->version()));
  EXPECT_EQ(replaced[0]["replaced_version"], std::to_string(v1->version()));
  EXPECT_EQ(replaced[0]["bytes"], std::to_string(v2->bytes_held()));
  auto refused = TextEvents("upload_refused");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0]["level"], "info");
  EXPECT_EQ(refused[0]["rpc"], "Quantize");
  EXPECT_EQ(refused[0]["name"], "x");
  EXPECT_EQ(refused[0]["code"], "ALREADY_EXISTS");
  EXPECT_EQ(refused[0]["reason"], std::string(taken.status().message()));
  auto unloaded = TextEvents("layer_unloaded");
  ASSERT_EQ(unloaded.size(), 1u);
  EXPECT_EQ(unloaded[0]["name"], "x");
  EXPECT_EQ(unloaded[0]["version"], std::to_string(v2->version()));
  EXPECT_EQ(unloaded[0]["origin"], "upload");

  EXPECT_TRUE(TextEvents("access").empty()) << "no --access-log, no access lines";
  auto drain_started = TextEvents("drain_started");
  ASSERT_EQ(drain_started.size(), 1u);
  EXPECT_EQ(drain_started[0]["signal"], "SIGTERM");
  EXPECT_EQ(drain_started[0]["in_flight"], "0");
  auto drained = TextEvents("drain_finished");
  ASSERT_EQ(drained.size(), 1u);
  EXPECT_EQ(drained[0]["timed_out"], "false");
  EXPECT_EQ(drained[0]["pending"], "0");
  EXPECT_EQ(drained[0]["unavailable"], "0");
  EXPECT_THAT(server->Log(), ::testing::Not(HasSubstr("warning")));
}

TEST_F(LogServerTest, AccessLogHasOneLinePerForwardWithTheIdEscaped) {
  const std::string odd_id = "id with space\n\x1b[2J\"";
  for (bool access : {true, false}) {
    SCOPED_TRACE(access);
    auto server = Start(access ? std::vector<std::string>{"--access-log", "--state-dir",
                                                          dir_.File("state-a")}
                               : std::vector<std::string>{"--state-dir", dir_.File("state-b")});
    ASSERT_TRUE(server->WaitServing()) << server->Log();
    auto client = Client::Connect(server->target());
    ASSERT_TRUE(Upload(*client, "l", 1, false).ok());
    ASSERT_TRUE(client->Forward(Forward("l", "r1")).ok());
    ASSERT_TRUE(client->Forward(Forward("l", odd_id)).ok());
    EXPECT_EQ(client->Forward(Forward("missing", "r3")).status().code(),
              absl::StatusCode::kNotFound);
    EXPECT_EQ(client->Forward(Forward("l", "r4", 32)).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(server->Stop(SIGTERM), 0);
    auto lines = TextEvents("access");
    if (!access) {
      EXPECT_TRUE(lines.empty()) << server->Log();
      continue;
    }
    ASSERT_EQ(lines.size(), 4u) << server->Log();
    std::map<std::string, std::map<std::string, std::string>> by_id;
    for (auto& l : lines) by_id[l["request_id"]] = l;
    EXPECT_EQ(by_id["r1"]["layer"], "l");
    EXPECT_EQ(by_id["r1"]["rows"], "2");
    EXPECT_EQ(by_id["r1"]["code"], "OK");
    EXPECT_GE(std::stoll(by_id["r1"]["compute_us"]), 0);
    EXPECT_GE(std::stoll(by_id["r1"]["queue_us"]), 0);
    EXPECT_EQ(by_id["r3"]["layer"], "missing");
    EXPECT_EQ(by_id["r3"]["code"], "NOT_FOUND");
    EXPECT_EQ(by_id["r4"]["code"], "INVALID_ARGUMENT");
    // The odd id: quoted, its newline, escape and quote escaped in place.
    EXPECT_EQ(by_id["id with space\\n\\x1b[2J\""]["code"], "OK");
    EXPECT_THAT(server->Log(), HasSubstr("request_id=\"id with space\\n\\x1b[2J\\\"\""));
  }
}

TEST_F(LogServerTest, JsonLinesParseAndCarryTheFields) {
  const std::string state = dir_.File("state");
  // Protobuf strings are UTF-8 (invalid bytes are refused before the
  // service sees them; the unit tests cover those), but control characters
  // and bidirectional overrides do arrive — in request ids: layer names
  // follow core/names.h's rule, so the name here is one of its odd forms.
  const std::string name = "x.y:q/p-r_0";
  const std::string& name_utf8 = name;
  uint64_t version = 0, bytes = 0;
  std::vector<nlohmann::json> events;
  auto read_events = [&] {
    events.clear();
    std::ifstream in(log_);
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("qlinear-server listening on ", 0) == 0 ||
          line.rfind("qlinear-server: metrics", 0) == 0) {
        continue;  // stdout's banner, printed in either format
      }
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      ASSERT_FALSE(j.is_discarded()) << "not one JSON event: " << line;
      for (const char* key : {"ts", "level", "event"}) {
        ASSERT_TRUE(j.contains(key) && j[key].is_string()) << line;
      }
      events.push_back(j);
    }
  };
  auto find = [&](const std::string& event) {
    std::vector<nlohmann::json> out;
    for (const auto& e : events) {
      if (e["event"] == event) out.push_back(e);
    }
    return out;
  };
  {
    auto server = Start({"--log-format", "json", "--access-log", "--state-dir", state});
    ASSERT_TRUE(server->WaitServing()) << server->Log();
    auto client = Client::Connect(server->target());
    auto info = Upload(*client, name, 1, false);
    ASSERT_TRUE(info.ok()) << info.status();
    version = info->version();
    bytes = info->bytes_held();
    EXPECT_EQ(Upload(*client, name, 2, false).status().code(), absl::StatusCode::kAlreadyExists);
    ASSERT_TRUE(client->Forward(Forward(name, "id\n\x01\xc2\x85")).ok());
    EXPECT_EQ(server->Stop(SIGTERM), 0);
    read_events();

    auto starting = find("starting");
    ASSERT_EQ(starting.size(), 1u);
    EXPECT_EQ(starting[0]["log-format"], "json");
    EXPECT_EQ(starting[0]["state-dir"], state);
    auto listening = find("listening");
    ASSERT_EQ(listening.size(), 1u);
    EXPECT_EQ(listening[0]["address"], server->target());
    EXPECT_EQ(listening[0]["layers"], 0);
    EXPECT_TRUE(listening[0]["simd_target"].is_string());
    auto published = find("layer_published");
    ASSERT_EQ(published.size(), 1u);
    EXPECT_EQ(published[0]["level"], "info");
    EXPECT_EQ(published[0]["name"], name_utf8);
    EXPECT_EQ(published[0]["version"], version);
    EXPECT_EQ(published[0]["bytes"], bytes);
    EXPECT_EQ(published[0]["origin"], "upload");
    auto refused = find("upload_refused");
    ASSERT_EQ(refused.size(), 1u);
    EXPECT_EQ(refused[0]["name"], name_utf8);
    EXPECT_EQ(refused[0]["code"], "ALREADY_EXISTS");
    EXPECT_THAT(refused[0]["reason"].get<std::string>(), HasSubstr("already exists"));
    auto access = find("access");
    ASSERT_EQ(access.size(), 1u);
    EXPECT_EQ(access[0]["request_id"], "id\n\x01\xc2\x85");
    EXPECT_EQ(access[0]["layer"], name_utf8);
    EXPECT_EQ(access[0]["rows"], 2);
    EXPECT_EQ(access[0]["code"], "OK");
    EXPECT_TRUE(access[0]["queue_us"].is_number_integer());
    EXPECT_TRUE(access[0]["compute_us"].is_number_integer());
    ASSERT_EQ(find("drain_started").size(), 1u);
    auto drained = find("drain_finished");
    ASSERT_EQ(drained.size(), 1u);
    EXPECT_EQ(drained[0]["timed_out"], false);
    EXPECT_TRUE(drained[0]["answered"].is_number_integer());
  }
  // Read back from the state dir: origin "state", its file as the source.
  auto server = Start({"--log-format=json", "--state-dir", state});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  EXPECT_EQ(server->Stop(SIGTERM), 0);
  read_events();
  auto published = find("layer_published");
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(published[0]["name"], name_utf8);
  EXPECT_EQ(published[0]["version"], version);
  EXPECT_EQ(published[0]["origin"], "state");
  EXPECT_THAT(published[0]["source"].get<std::string>(), HasSubstr(state));
}

// A request still queued when SIGTERM comes is counted and answered.
TEST_F(LogServerTest, DrainLinesCountTheRequestsInFlight) {
  // A lone row waits up to 10 s for company, unless the server drains.
  auto server = Start({"--state-dir", dir_.File("state"), "--max-batch-delay-us", "10000000"});
  ASSERT_TRUE(server->WaitServing()) << server->Log();
  auto client = Client::Connect(server->target());
  ASSERT_TRUE(Upload(*client, "l", 1, false).ok());
  absl::StatusOr<v1::ForwardResponse> answer;
  std::thread caller([&] { answer = client->Forward(Forward("l", "queued")); });
  // Until the engine holds the request (polling its state, not the clock).
  for (int i = 0; i < 60000; ++i) {
    auto stats = client->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    if (stats->server().queue_rows() == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int exit_status = server->Stop(SIGTERM);
  caller.join();
  EXPECT_EQ(exit_status, 0);
  EXPECT_TRUE(answer.ok()) << answer.status();
  auto started = TextEvents("drain_started");
  ASSERT_EQ(started.size(), 1u) << server->Log();
  EXPECT_EQ(started[0]["in_flight"], "1");
  auto finished = TextEvents("drain_finished");
  ASSERT_EQ(finished.size(), 1u);
  EXPECT_EQ(finished[0]["timed_out"], "false");
  EXPECT_EQ(finished[0]["pending"], "1");
  EXPECT_EQ(finished[0]["answered"], "1");
  EXPECT_EQ(finished[0]["unavailable"], "0");
}

}  // namespace
}  // namespace qlinear
