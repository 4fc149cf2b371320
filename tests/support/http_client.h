// Blocking HTTP/1.1 client helpers for the tests (Beast, plus a raw socket for framing checks).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace diffusiond::testing {

struct HttpReply {
  unsigned status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  nlohmann::json json() const { return nlohmann::json::parse(body); }
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? "" : it->second;
  }
};

using Headers = std::vector<std::pair<std::string, std::string>>;

// One request on a fresh connection (closed afterwards).
HttpReply http_request(std::uint16_t port, const std::string& method, const std::string& target,
                       const std::string& body = "", const Headers& headers = {});

// A keep-alive connection for several requests in a row.
class HttpConnection {
 public:
  explicit HttpConnection(std::uint16_t port);
  HttpReply request(const std::string& method, const std::string& target,
                    const std::string& body = "", const Headers& headers = {});
  bool is_open() const;

 private:
  boost::asio::io_context ioc_;
  boost::beast::tcp_stream stream_;
  boost::beast::flat_buffer buffer_;
};

// Raw bytes over TCP, with a receive timeout so a broken server fails the test instead of
// hanging it.
class RawConnection {
 public:
  explicit RawConnection(std::uint16_t port, int timeout_s = 20);
  void send(const std::string& bytes);
  // Reads until `marker` appears in what was received; returns everything received so far.
  std::string read_until(const std::string& marker);
  // Reads until the server closes; returns everything received.
  std::string read_to_close();
  const std::string& received() const { return received_; }
  // Reads what arrives next (waits for at least one byte); false when the server closed.
  bool read_some();

 private:
  boost::asio::io_context ioc_;
  boost::asio::ip::tcp::socket socket_;
  std::string received_;
};

struct SseMessage {
  std::string event;
  std::string id;
  std::string data;
};
// Parses an event-stream body (the part after the HTTP header) per the SSE spec: fields per
// line, blank line dispatches, ':' lines are comments.
std::vector<SseMessage> parse_event_stream(const std::string& body, int* comments = nullptr);

}  // namespace diffusiond::testing
