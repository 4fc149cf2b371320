#include "tests/support/http_client.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <stdexcept>

namespace diffusiond::testing {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

http::request<http::string_body> make_request(const std::string& method, const std::string& target,
                                              const std::string& body, const Headers& headers) {
  http::request<http::string_body> req;
  req.method_string(method);
  req.target(target);
  req.version(11);
  req.set(http::field::host, "127.0.0.1");
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  if (!body.empty() || method == "POST") req.prepare_payload();
  return req;
}

HttpReply to_reply(http::response<http::string_body>& res) {
  HttpReply r;
  r.status = res.result_int();
  for (const auto& f : res.base()) {
    std::string name(f.name_string());
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    r.headers[name] = std::string(f.value());
  }
  r.body = res.body();
  return r;
}

void set_timeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

}  // namespace

HttpReply http_request(std::uint16_t port, const std::string& method, const std::string& target,
                       const std::string& body, const Headers& headers) {
  HttpConnection c(port);
  Headers h = headers;
  h.emplace_back("Connection", "close");
  return c.request(method, target, body, h);
}

HttpConnection::HttpConnection(std::uint16_t port) : stream_(ioc_) {
  stream_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  set_timeout(stream_.socket().native_handle(), 30);
}

HttpReply HttpConnection::request(const std::string& method, const std::string& target,
                                  const std::string& body, const Headers& headers) {
  auto req = make_request(method, target, body, headers);
  http::write(stream_, req);
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024 * 1024);
  if (method == "HEAD") parser.skip(true);
  http::read(stream_, buffer_, parser);
  return to_reply(parser.get());
}

bool HttpConnection::is_open() const {
  return stream_.socket().is_open();
}

RawConnection::RawConnection(std::uint16_t port, int timeout_s) : socket_(ioc_) {
  socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  set_timeout(socket_.native_handle(), timeout_s);
}

void RawConnection::send(const std::string& bytes) {
  asio::write(socket_, asio::buffer(bytes));
}

bool RawConnection::read_some() {
  // recv itself, not asio's read_some: asio waits again (without a timeout) when a blocking recv
  // returns EAGAIN, so the socket's receive timeout would never end a read.
  char buf[8192];
  for (;;) {
    const ssize_t n = ::recv(socket_.native_handle(), buf, sizeof buf, 0);
    if (n > 0) {
      received_.append(buf, static_cast<std::size_t>(n));
      return true;
    }
    if (n == 0 || errno == ECONNRESET) return false;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) throw std::runtime_error("read timed out");
    throw std::runtime_error(std::string("read failed: ") + std::strerror(errno));
  }
}

std::string RawConnection::read_until(const std::string& marker) {
  while (received_.find(marker) == std::string::npos) {
    if (!read_some()) throw std::runtime_error("connection closed before '" + marker + "'");
  }
  return received_;
}

std::string RawConnection::read_to_close() {
  while (read_some()) {
  }
  return received_;
}

std::vector<SseMessage> parse_event_stream(const std::string& body, int* comments) {
  std::vector<SseMessage> out;
  SseMessage cur;
  bool has_data = false;
  std::size_t pos = 0;
  if (comments) *comments = 0;
  while (pos < body.size()) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string::npos) break;  // incomplete last line
    std::string line = body.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) {
      if (has_data || !cur.event.empty()) out.push_back(cur);
      cur = SseMessage{};
      has_data = false;
      continue;
    }
    if (line[0] == ':') {
      if (comments) ++*comments;
      continue;
    }
    const std::size_t colon = line.find(':');
    std::string field = line.substr(0, colon);
    std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.erase(0, 1);
    if (field == "event") cur.event = value;
    if (field == "id") cur.id = value;
    if (field == "data") {
      if (has_data) cur.data += '\n';
      cur.data += value;
      has_data = true;
    }
  }
  return out;
}

}  // namespace diffusiond::testing
