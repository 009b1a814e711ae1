#include "support/redis_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <system_error>

namespace sluice::test {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// Closes a file descriptor when it goes out of scope.
struct fd_guard {
  int fd = -1;
  explicit fd_guard(int f) : fd(f) {}
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
};

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// Returns a port that was free on 127.0.0.1 a moment ago (the kernel's pick for port 0).
std::uint16_t free_port() {
  fd_guard s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (s.fd < 0) fail(errno_text("socket"));
  sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  if (::bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s.fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    fail(errno_text("binding 127.0.0.1:0"));
  }
  return ntohs(a.sin_port);
}

// Returns the full path of `program`: itself when it has a '/', else the first match in
// PATH, else the first of `fallbacks`; empty when none is executable.
std::string find_program(const std::string& program, std::vector<std::string> fallbacks = {}) {
  if (program.find('/') != std::string::npos) {
    return ::access(program.c_str(), X_OK) == 0 ? program : std::string();
  }
  if (const char* path = std::getenv("PATH")) {
    std::string dirs = path;
    std::size_t start = 0;
    while (start <= dirs.size()) {
      const std::size_t end = std::min(dirs.find(':', start), dirs.size());
      const std::string dir = dirs.substr(start, end - start);
      const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
      start = end + 1;
    }
  }
  for (const std::string& f : fallbacks) {
    if (::access(f.c_str(), X_OK) == 0) return f;
  }
  return {};
}

// Starts `path` with `argv`: stdin from /dev/null, stdout and stderr to the given
// descriptors, every other descriptor closed, killed when the calling thread dies.
pid_t spawn(const std::string& path, const std::vector<std::string>& argv, int out_fd, int err_fd) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) fail(errno_text("fork"));
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(127);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP}) ::signal(sig, SIG_DFL);
    const int in = ::open("/dev/null", O_RDONLY);
    if (in < 0 || ::dup2(in, 0) < 0 || ::dup2(out_fd, 1) < 0 || ::dup2(err_fd, 2) < 0) {
      ::_exit(127);
    }
    if (::syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
      for (int fd = 3; fd < 1024; ++fd) ::close(fd);
    }
    ::execv(path.c_str(), args.data());
    constexpr char message[] = "spawn: exec failed\n";
    [[maybe_unused]] auto n = ::write(2, message, sizeof message - 1);
    ::_exit(127);
  }
  return pid;
}

// Waits up to `timeout` for `pid` to exit; returns true (and its wait status) when it has.
bool wait_for_exit(pid_t pid, milliseconds timeout, int& status) {
  const auto deadline = steady_clock::now() + timeout;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) {  // not our child (any more)
      status = 0;
      return true;
    }
    if (steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(2));
  }
}

// Signals `pid` and reaps it; SIGKILL when it is still there after `grace`.
void end_process(pid_t pid, int signal, milliseconds grace) {
  int status = 0;
  ::kill(pid, signal);
  if (signal != SIGKILL) ::kill(pid, SIGCONT);  // a stopped process cannot act on SIGTERM
  if (wait_for_exit(pid, grace, status)) return;
  ::kill(pid, SIGKILL);
  wait_for_exit(pid, std::chrono::seconds(30), status);
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string last_lines(const std::filesystem::path& file, std::size_t lines) {
  std::ifstream in(file);
  std::deque<std::string> kept;
  for (std::string line; std::getline(in, line);) {
    kept.push_back(line);
    if (kept.size() > lines) kept.pop_front();
  }
  std::string out;
  for (const std::string& l : kept) out += l + "\n";
  return out;
}

// Quotes a redis.conf argument ("..." with \" \\ and \xHH escapes).
std::string conf_quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20 || u >= 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", u);
      out += hex;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string encode_command(const std::vector<std::string>& args) {
  std::string out = "*" + std::to_string(args.size()) + "\r\n";
  for (const std::string& a : args) {
    out.append("$").append(std::to_string(a.size())).append("\r\n");
    out.append(a).append("\r\n");
  }
  return out;
}

redis_reply tree(const redisReply* r) {
  redis_reply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      out.text.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.text = "(error) " + std::string(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.text = std::to_string(r->integer);
      break;
    case REDIS_REPLY_ARRAY:
      out.array = true;
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(tree(r->element[i]));
      break;
    default:
      out.text = "(nil)";
  }
  return out;
}

std::string openssl_errors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += out.empty() ? buf : std::string("; ") + buf;
  }
  return out.empty() ? "no OpenSSL error" : out;
}

// Blocks SIGPIPE in this thread while OpenSSL writes to a socket (OpenSSL uses write(),
// with no MSG_NOSIGNAL), and discards a SIGPIPE that the write raised.
class sigpipe_blocked {
 public:
  sigpipe_blocked() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~sigpipe_blocked() {
    sigset_t pending;
    sigpending(&pending);
    if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
      const timespec zero{};
      sigtimedwait(&pipe_, nullptr, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  sigpipe_blocked(const sigpipe_blocked&) = delete;
  sigpipe_blocked& operator=(const sigpipe_blocked&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

// One client connection to 127.0.0.1:<port>, plain or TLS, where every step has to be done
// by one deadline. Replies are parsed by hiredis's reader.
class session {
 public:
  session(std::uint16_t port, const std::filesystem::path& ca_file,
          steady_clock::time_point deadline)
      : deadline_(deadline),
        reader_(redisReaderCreate()),
        socket_(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) {
    if (reader_ == nullptr) fail("out of memory");
    if (fd_ < 0) fail(errno_text("socket"));
    const sockaddr_in a = loopback(port);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
      if (errno != EINPROGRESS) fail(errno_text("connect"));
      wait(POLLOUT, "connect");
      int error = 0;
      socklen_t len = sizeof error;
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &error, &len);
      if (error != 0) fail(std::string("connect: ") + std::strerror(error));
    }
    if (!ca_file.empty()) handshake(ca_file);
  }
  void send(const std::string& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const char* p = bytes.data() + done;
      const std::size_t n = bytes.size() - done;
      if (ssl_ != nullptr) {
        sigpipe_blocked blocked;
        const int w = SSL_write(ssl_.get(), p, static_cast<int>(n));
        if (w > 0) {
          done += static_cast<std::size_t>(w);
        } else {
          retry_tls(w, "write");
        }
      } else {
        const ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
        if (w > 0) {
          done += static_cast<std::size_t>(w);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          wait(POLLOUT, "write");
        } else if (errno != EINTR) {
          fail(errno_text("write"));
        }
      }
    }
  }

  // Returns the next reply.
  redis_reply receive() {
    for (;;) {
      void* reply = nullptr;
      if (redisReaderGetReply(reader_.get(), &reply) != REDIS_OK) {
        fail(std::string("malformed reply: ") + reader_->errstr);
      }
      if (reply != nullptr) {
        redis_reply out = tree(static_cast<redisReply*>(reply));
        freeReplyObject(reply);
        return out;
      }
      char buf[16384];
      if (ssl_ != nullptr) {
        const int r = SSL_read(ssl_.get(), buf, sizeof buf);
        if (r > 0) {
          redisReaderFeed(reader_.get(), buf, static_cast<std::size_t>(r));
        } else {
          retry_tls(r, "read");
        }
      } else {
        const ssize_t r = ::recv(fd_, buf, sizeof buf, 0);
        if (r > 0) {
          redisReaderFeed(reader_.get(), buf, static_cast<std::size_t>(r));
        } else if (r == 0) {
          fail("read: connection closed by the server");
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
          wait(POLLIN, "read");
        } else if (errno != EINTR) {
          fail(errno_text("read"));
        }
      }
    }
  }

 private:
  void handshake(const std::filesystem::path& ca_file) {
    ctx_.reset(SSL_CTX_new(TLS_client_method()));
    if (ctx_ == nullptr) fail("SSL_CTX_new: " + openssl_errors());
    if (SSL_CTX_load_verify_locations(ctx_.get(), ca_file.c_str(), nullptr) != 1) {
      fail("loading CA " + ca_file.string() + ": " + openssl_errors());
    }
    SSL_CTX_set_verify(ctx_.get(), SSL_VERIFY_PEER, nullptr);
    ssl_.reset(SSL_new(ctx_.get()));
    if (ssl_ == nullptr || SSL_set_fd(ssl_.get(), fd_) != 1 ||
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), "127.0.0.1") != 1) {
      fail("TLS setup: " + openssl_errors());
    }
    for (;;) {
      sigpipe_blocked blocked;
      const int r = SSL_connect(ssl_.get());
      if (r == 1) return;
      retry_tls(r, "TLS handshake");
    }
  }

  // After a TLS call returned `r` <= 0: waits when OpenSSL wants to, else throws.
  void retry_tls(int r, const char* what) {
    const int e = SSL_get_error(ssl_.get(), r);
    if (e == SSL_ERROR_WANT_READ) {
      wait(POLLIN, what);
    } else if (e == SSL_ERROR_WANT_WRITE) {
      wait(POLLOUT, what);
    } else if (e == SSL_ERROR_ZERO_RETURN) {
      fail(std::string(what) + ": connection closed by the server");
    } else {
      const std::string detail =
          e == SSL_ERROR_SYSCALL && errno != 0 ? std::strerror(errno) : openssl_errors();
      fail(std::string(what) + ": " + detail);
    }
  }

  void wait(short events, const char* what) {
    for (;;) {
      const auto left =
          std::chrono::duration_cast<milliseconds>(deadline_ - steady_clock::now()).count();
      if (left <= 0) fail(std::string(what) + ": timed out");
      pollfd p{fd_, events, 0};
      const int r = ::poll(&p, 1, static_cast<int>(left));
      if (r > 0) return;
      if (r < 0 && errno != EINTR) fail(errno_text("poll"));
    }
  }

  template <auto free_function>
  struct deleter {
    template <class T>
    void operator()(T* p) const {
      free_function(p);
    }
  };

  steady_clock::time_point deadline_;
  std::unique_ptr<redisReader, deleter<redisReaderFree>> reader_;
  fd_guard socket_;  // declared before ssl_, so closed after it is freed
  const int fd_ = socket_.fd;
  std::unique_ptr<SSL_CTX, deleter<SSL_CTX_free>> ctx_;
  std::unique_ptr<SSL, deleter<SSL_free>> ssl_;
};

std::filesystem::path make_temp_dir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/sluice-redis-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) fail(errno_text("mkdtemp " + pattern));
  return pattern;
}

}  // namespace

// ---- one session of commands --------------------------------------------------------------

std::string printable(const redis_reply& reply) {
  if (!reply.array) return reply.text;
  std::string out = "[";
  for (std::size_t i = 0; i < reply.elements.size(); ++i) {
    if (i > 0) out += ", ";
    out += printable(reply.elements[i]);
  }
  return out + "]";
}

std::vector<redis_reply> send_commands(const redis_endpoint& to,
                                       const std::vector<std::vector<std::string>>& list) {
  session s(to.port, to.ca_file, steady_clock::now() + to.timeout);
  std::string out = to.auth.empty() ? std::string() : encode_command(to.auth);
  for (const auto& args : list) out += encode_command(args);
  s.send(out);
  if (!to.auth.empty()) {
    if (const redis_reply reply = s.receive(); printable(reply) != "OK") {
      fail("AUTH failed: " + printable(reply));
    }
  }
  std::vector<redis_reply> replies;
  for (std::size_t i = 0; i < list.size(); ++i) replies.push_back(s.receive());
  return replies;
}

std::string percent_encode(const std::string& s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += c;
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", u);
      out += hex;
    }
  }
  return out;
}

void make_test_tls_files(const std::filesystem::path& dir) {
  const std::string openssl = find_program("openssl", {"/usr/bin/openssl"});
  if (openssl.empty()) fail("openssl not found in PATH or /usr/bin (scripts/install-deps.sh)");
  {
    std::ofstream ext(dir / "server.ext");
    ext << "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        << "basicConstraints=CA:FALSE\n"
        // clientAuth too: cluster nodes present it to each other on the cluster bus.
        << "extendedKeyUsage=serverAuth,clientAuth\n";
  }
  const std::string d = dir.string() + "/";
  const std::vector<std::string> ec = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                       "-nodes"};
  auto req = [&](std::vector<std::string> tail) {
    std::vector<std::string> argv = {openssl, "req"};
    argv.insert(argv.end(), ec.begin(), ec.end());
    argv.insert(argv.end(), tail.begin(), tail.end());
    return argv;
  };
  const std::vector<std::vector<std::string>> steps = {
      req({"-x509", "-days", "2", "-keyout", d + "ca.key", "-out", d + "ca.crt", "-subj",
           "/CN=sluice test CA", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
           "keyUsage=critical,keyCertSign,cRLSign"}),
      req({"-keyout", d + "server.key", "-out", d + "server.csr", "-subj", "/CN=localhost"}),
      {openssl, "x509", "-req", "-in", d + "server.csr", "-CA", d + "ca.crt", "-CAkey",
       d + "ca.key", "-CAcreateserial", "-CAserial", d + "ca.srl", "-days", "2", "-out",
       d + "server.crt", "-extfile", d + "server.ext"},
      req({"-x509", "-days", "2", "-keyout", d + "other_ca.key", "-out", d + "other_ca.crt",
           "-subj", "/CN=sluice unrelated test CA"}),
  };
  for (const auto& argv : steps) {
    const process_result r = run_process(argv, std::chrono::seconds(30));
    if (r.exit_code != 0) {
      std::string shown;
      for (const std::string& a : argv) shown += (shown.empty() ? "" : " ") + a;
      fail("making TLS files failed (exit " + std::to_string(r.exit_code) + "): " + shown + "\n" +
           r.err);
    }
  }
}

// ---- redis_server ------------------------------------------------------------------------

redis_server::redis_server(redis_server_options options)
    : options_(std::move(options)), dir_(make_temp_dir()) {
  try {
    if (options_.tls) make_test_tls_files(dir_);
    std::string failure;
    // The port is free when picked but may be taken before Redis binds it: pick again.
    for (int attempt = 1;; ++attempt) {
      port_ = free_port();
      write_config();
      if (launch(failure)) return;
      if (attempt == 5 || failure.find("Address already in use") == std::string::npos) break;
    }
    fail(failure);
  } catch (...) {
    terminate(SIGKILL);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    throw;
  }
}

redis_server::~redis_server() {
  terminate(SIGTERM);
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

void redis_server::start() {
  if (running()) return;
  std::string failure;
  if (!launch(failure)) fail(failure);
}

void redis_server::stop() { terminate(SIGTERM); }

void redis_server::kill() { terminate(SIGKILL); }

void redis_server::pause() {
  if (running()) ::kill(pid_, SIGSTOP);
}

void redis_server::resume() {
  if (running()) ::kill(pid_, SIGCONT);
}

void redis_server::terminate(int signal) {
  if (pid_ <= 0) return;
  end_process(pid_, signal, std::chrono::seconds(5));
  pid_ = 0;
}

std::string redis_server::uri() const {
  return std::string(options_.tls ? "rediss" : "redis") + "://127.0.0.1:" + std::to_string(port_);
}

std::string redis_server::full_uri() const {
  std::string credentials;
  if (!options_.acl_user.empty()) {
    credentials =
        percent_encode(options_.acl_user) + ":" + percent_encode(options_.acl_password) + "@";
  } else if (!options_.password.empty()) {
    credentials = ":" + percent_encode(options_.password) + "@";
  }
  std::string out = std::string(options_.tls ? "rediss" : "redis") + "://" + credentials +
                    "127.0.0.1:" + std::to_string(port_);
  if (options_.tls) out += "?tls_ca=" + percent_encode(ca_file().string());
  return out;
}

std::filesystem::path redis_server::ca_file() const {
  return options_.tls ? dir_ / "ca.crt" : std::filesystem::path();
}

std::filesystem::path redis_server::other_ca_file() const {
  return options_.tls ? dir_ / "other_ca.crt" : std::filesystem::path();
}

std::filesystem::path redis_server::unix_socket() const {
  return options_.unix_socket ? dir_ / "redis.sock" : std::filesystem::path();
}

std::string redis_server::log_tail(std::size_t lines) const {
  return last_lines(log_file(), lines);
}

std::string redis_server::command(const std::vector<std::string>& args) const {
  return commands({args}).front();
}

std::vector<std::string> redis_server::commands(
    const std::vector<std::vector<std::string>>& list,
    const redis_session_options& session_options) const {
  redis_endpoint to;
  to.port = port_;
  if (options_.tls) to.ca_file = ca_file();
  if (session_options.authenticate && !options_.acl_user.empty()) {
    to.auth = {"AUTH", options_.acl_user, options_.acl_password};
  } else if (session_options.authenticate && !options_.password.empty()) {
    to.auth = {"AUTH", options_.password};
  }
  to.timeout = session_options.timeout;
  std::vector<std::string> replies;
  try {
    for (const redis_reply& r : send_commands(to, list)) replies.push_back(printable(r));
  } catch (const std::runtime_error& e) {
    fail("redis_server " + uri() + ": " + e.what());
  }
  return replies;
}

void redis_server::write_config() const {
  std::ofstream conf(dir_ / "redis.conf", std::ios::trunc);
  const std::string port = std::to_string(port_);
  conf << "bind 127.0.0.1\n"
       << "port " << (options_.tls ? "0" : port) << "\n"
       << "dir " << conf_quote(dir_.string()) << "\n"
       << "save \"\"\n"
       << "appendonly no\n"
       << "daemonize no\n"
       << "logfile \"\"\n"
       << "enable-debug-command local\n";
  if (options_.tls) {
    conf << "tls-port " << port << "\n"
         << "tls-cert-file " << conf_quote((dir_ / "server.crt").string()) << "\n"
         << "tls-key-file " << conf_quote((dir_ / "server.key").string()) << "\n"
         << "tls-ca-cert-file " << conf_quote(ca_file().string()) << "\n"
         << "tls-auth-clients no\n";
  }
  if (options_.unix_socket) {
    conf << "unixsocket " << conf_quote(unix_socket().string()) << "\n"
         << "unixsocketperm 700\n";
  }
  if (!options_.password.empty()) conf << "requirepass " << conf_quote(options_.password) << "\n";
  if (!options_.acl_user.empty()) {
    conf << "user " << conf_quote(options_.acl_user) << " on "
         << conf_quote(">" + options_.acl_password) << " ~* &* +@all\n";
  }
  for (const std::string& line : options_.extra_config) conf << line << "\n";
  if (!conf.flush()) fail("cannot write " + (dir_ / "redis.conf").string());
}

bool redis_server::launch(std::string& failure) {
  const char* env = std::getenv("SLUICE_REDIS_SERVER");
  const std::string program =
      find_program(env != nullptr && *env != '\0' ? env : "redis-server",
                   {"/usr/bin/redis-server", "/usr/local/bin/redis-server"});
  if (program.empty()) {
    fail(
        "redis-server not found ($SLUICE_REDIS_SERVER, PATH, /usr/bin, /usr/local/bin); "
        "install it: scripts/install-deps.sh");
  }
  const std::string log = log_file().string();
  {
    fd_guard out(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (out.fd < 0) fail(errno_text("open " + log));
    std::vector<std::string> argv{program, (dir_ / "redis.conf").string()};
    if (options_.sentinel) argv.push_back("--sentinel");
    pid_ = spawn(program, argv, out.fd, out.fd);
  }
  const auto deadline = steady_clock::now() + options_.start_timeout;
  std::string last_error = "no answer yet";
  for (;;) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = 0;
      failure = "redis-server on port " + std::to_string(port_) + " exited at start-up (exit " +
                std::to_string(exit_code(status)) + "); last lines of " + log + ":\n" + log_tail();
      return false;
    }
    try {
      redis_session_options ping;
      ping.timeout = std::min<milliseconds>(
          milliseconds(1000),
          std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now()) +
              milliseconds(1));
      last_error = commands({{"PING"}}, ping).front();
      if (last_error == "PONG") return true;
    } catch (const std::runtime_error& e) {
      last_error = e.what();
    }
    // A server that refuses our credentials is up and will go on refusing them.
    if (last_error.find("AUTH failed") != std::string::npos || steady_clock::now() >= deadline) {
      terminate(SIGKILL);
      failure = "redis-server on port " + std::to_string(port_) +
                " is not answering PING: " + last_error + " (start_timeout " +
                std::to_string(options_.start_timeout.count()) + " ms); last lines of " + log +
                ":\n" + log_tail();
      return false;
    }
    std::this_thread::sleep_for(milliseconds(5));  // readiness polling, bounded by deadline
  }
}

// ---- fake_resp_server --------------------------------------------------------------------

fake_resp_server::fake_resp_server(std::string reply, fake_resp_behaviour behaviour)
    : reply_(std::move(reply)), behaviour_(behaviour) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) fail(errno_text("fake_resp_server: socket"));
  sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  int fds[2];
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::listen(listen_fd_, 64) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0 ||
      ::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    const std::string message = errno_text("fake_resp_server: listening on 127.0.0.1:0");
    ::close(listen_fd_);
    fail(message);
  }
  port_ = ntohs(a.sin_port);
  wake_read_fd_ = fds[0];
  wake_write_fd_ = fds[1];
  thread_ = std::thread([this] { serve(); });
}

fake_resp_server::~fake_resp_server() {
  const char stop = 's';
  [[maybe_unused]] auto n = ::write(wake_write_fd_, &stop, 1);
  thread_.join();
  ::close(listen_fd_);
  ::close(wake_read_fd_);
  ::close(wake_write_fd_);
}

std::string fake_resp_server::uri() const { return "redis://127.0.0.1:" + std::to_string(port_); }

std::string fake_resp_server::received() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return received_;
}

void fake_resp_server::serve() {
  std::vector<int> clients;
  for (;;) {
    std::vector<pollfd> fds = {{wake_read_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (const int c : clients) fds.push_back({c, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (fds[0].revents != 0) break;
    std::vector<int> open;
    for (std::size_t i = 2; i < fds.size(); ++i) {
      const int c = fds[i].fd;
      bool keep = true;
      if (fds[i].revents != 0) {
        char buf[16384];
        const ssize_t n = ::recv(c, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
          {
            std::lock_guard<std::mutex> lock(mutex_);
            received_.append(buf, static_cast<std::size_t>(n));
          }
          if (!reply_.empty()) ::send(c, reply_.data(), reply_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
          keep = behaviour_ != fake_resp_behaviour::reply_once_then_close;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          keep = false;
        }
      }
      if (keep) {
        open.push_back(c);
      } else {
        ::close(c);
      }
    }
    clients.swap(open);
    if (fds[1].revents != 0) {
      for (;;) {
        const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) break;
        ++connections_;
        if (behaviour_ == fake_resp_behaviour::close_on_accept) {
          ::close(c);
        } else {
          clients.push_back(c);
        }
      }
    }
  }
  for (const int c : clients) ::close(c);
}

// ---- processes and the reference peer ----------------------------------------------------

process_result run_process(const std::vector<std::string>& argv, milliseconds timeout) {
  if (argv.empty()) fail("run_process: no program");
  const std::string program = find_program(argv[0]);
  if (program.empty()) fail("run_process: " + argv[0] + " not found in PATH");
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) fail(errno_text("pipe"));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    fail(errno_text("pipe"));
  }
  fd_guard out_r(out_pipe[0]), err_r(err_pipe[0]);
  pid_t pid;
  {
    fd_guard out_w(out_pipe[1]), err_w(err_pipe[1]);
    pid = spawn(program, argv, out_w.fd, err_w.fd);
  }
  process_result result;
  const auto deadline = steady_clock::now() + timeout;
  pollfd fds[2] = {{out_r.fd, POLLIN, 0}, {err_r.fd, POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    const int r = ::poll(fds, 2, static_cast<int>(left.count()));
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[8192];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        fds[i].fd = -1;  // poll ignores negative descriptors; fd_guard closes them
      }
    }
  }
  int status = 0;
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  if (result.timed_out || !wait_for_exit(pid, std::max(left, milliseconds(0)), status)) {
    result.timed_out = true;
    ::kill(pid, SIGKILL);
    wait_for_exit(pid, std::chrono::seconds(30), status);
  }
  result.exit_code = exit_code(status);
  return result;
}

namespace {

std::filesystem::path reference_dir() {
  if (const char* env = std::getenv("SLUICE_REFERENCE_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return SLUICE_TEST_REFERENCE_DIR;
}

std::string reference_python() {
  if (const char* env = std::getenv("SLUICE_REFERENCE_PYTHON"); env != nullptr && *env != '\0') {
    return env;
  }
  return "/usr/bin/python3";
}

}  // namespace

std::string reference_peer_unavailable() {
  static const std::string why = [] {
    const std::filesystem::path limiter = reference_dir() / "rate_limiter.py";
    if (!std::filesystem::exists(limiter)) {
      return "reference limiter not found: " + limiter.string() +
             " does not exist (set SLUICE_REFERENCE_DIR to the directory that holds it)";
    }
    const std::string python = reference_python();
    if (::access(python.c_str(), X_OK) != 0) {
      return python + " not found (install python3, or set SLUICE_REFERENCE_PYTHON)";
    }
    const process_result r =
        run_process({python, "-c", "import redis.asyncio"}, std::chrono::seconds(30));
    if (r.exit_code != 0) {
      std::string err = r.err;
      while (!err.empty() && err.back() == '\n') err.pop_back();
      return python + " cannot import redis.asyncio (install python3-redis): " +
             err.substr(err.rfind('\n') == std::string::npos ? 0 : err.rfind('\n') + 1);
    }
    return std::string();
  }();
  return why;
}

process_result run_reference_peer(const std::vector<std::string>& args, milliseconds timeout) {
  std::vector<std::string> argv = {reference_python(), SLUICE_TEST_REFERENCE_PEER,
                                   "--reference-dir", reference_dir().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, timeout);
}

}  // namespace sluice::test
