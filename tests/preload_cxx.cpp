// preload_cxx.cpp — a C++ program of ours for tests/preload-programs.sh: std::map, std::string
// and std::thread, new/delete through libstdc++ (which calls malloc/free). Deterministic output.
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

static unsigned long work(int id)
{
	std::map<std::string, std::vector<int>> m;
	for (int i = 0; i < 60000; i++) {
		std::string k = "key-" + std::to_string(id) + "-" + std::to_string(i * 7919 % 60000);
		m[k].push_back(i);
		if (i % 3 == 0)
			m.erase("key-" + std::to_string(id) + "-" + std::to_string(i / 2));
	}
	unsigned long sum = 0;
	for (auto &kv : m)
		sum = sum * 31 + kv.first.size() + kv.second.size();
	std::string s;
	for (int i = 0; i < 20000; i++)
		s += std::to_string(i);
	return sum ^ s.size();
}

int main()
{
	std::vector<unsigned long> res(6);
	std::vector<std::thread> th;
	for (int t = 0; t < 6; t++)
		th.emplace_back([&res, t] { res[t] = work(t); });
	for (auto &t : th)
		t.join();
	for (int t = 0; t < 6; t++)
		std::printf("thread %d: %lu\n", t, res[t]);
	return 0;
}
