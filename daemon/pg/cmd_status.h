// `diffusiond status` (daemon/pg/cmd_status.cpp).
#pragma once

namespace CLI {
class App;
}

namespace diffusiond {
void add_status_command(CLI::App& app);
}
